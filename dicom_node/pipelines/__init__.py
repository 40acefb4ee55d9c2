"""Analysis pipelines: each turns the instances of one study into a finding and DICOM outputs."""
