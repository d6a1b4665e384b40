"""DICOM in and out: receiving, the spool, de-identification, pixels, reports and sending."""

import pydicom.config


def read_as_received() -> None:
    """Make pydicom read values exactly as stored, in this process: devices write invalid
    values, which must not stop us reading, and pydicom's warnings about them would quote them."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
