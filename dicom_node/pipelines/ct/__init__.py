"""CT pipeline and everything it owns: series checks and stacking (``series``), lungs and
airway (``lungs``), lesions and involvement (``quant``), nodules and masses (``focal``), the RSNA
pattern (``pattern``).  ``pipeline.CtPipeline`` is the entry point; no TensorFlow on this path."""
