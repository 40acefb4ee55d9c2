"""DICOM outputs built with highdicom: TID 1500 SR, Secondary Capture, Segmentation."""
