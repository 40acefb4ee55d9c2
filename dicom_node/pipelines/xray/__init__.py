"""X-ray pipeline and everything it owns: preprocessing shared with ``training/``, lung fields,
Grad-CAM, the feature-distance refusal and the severity head.  ``pipeline.XrayPipeline`` is the
entry point; importing this package imports no TensorFlow."""
