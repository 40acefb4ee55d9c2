"""Analysis pipelines: each turns the source instances of one study into a finding and DICOM outputs."""
