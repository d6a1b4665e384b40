"""sonoshot: few-shot anomaly detection for ultrasound, as a DICOM node in a PACS workflow."""

__version__ = "0.1.0"
