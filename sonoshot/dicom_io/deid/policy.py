"""policy.py
=========

:class:`DeidPolicy`: the de-identification settings in force, built from
:class:`sonoshot.config.DeidConfig`, and the ``--what-if`` description of what they do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sonoshot.config import DeidConfig, PixelMask
from sonoshot.host import usable_cores

from .profile import EDITION, OPTION_NAMES, ROWS, resolve


def auto_text_threads() -> int:
    """``deid.text_detector_threads = 0``: two threads where the process may use more than two
    cores, else one, so that a core stays with the receiver on a small machine."""
    return 2 if usable_cores() > 2 else 1


@dataclass(frozen=True)
class DeidPolicy:
    """What :func:`sonoshot.dicom_io.deid.deidentify_file` does (PS3.15 Annex E and options).

    Raises
    ------
    ValueError
        If ``ocr_max_frames``, ``text_frames`` or ``text_threads`` is below 1, or
        ``ocr_min_score`` is outside 50..100.
    """

    retain_modified_dates: bool = True  # E.3.6: keyed per-patient date shift
    retain_patient_characteristics: bool = False  # E.3.7
    retain_device_identity: bool = False  # E.3.8
    clean_descriptors: bool = True  # E.3.5
    clean_pixel_data: bool = True  # E.3.1
    ocr: bool = True  # tesseract check of the cleaned frames
    ocr_max_frames: int = 8
    ocr_min_score: float = 85.0  # rapidfuzz partial_ratio that counts as a match
    pixel_masks: tuple[PixelMask, ...] = ()
    text_frames: int = 4  # frames of a clip the text detector searches (union of their boxes)
    text_threads: int = 1  # onnxruntime threads of the text detector

    def __post_init__(self) -> None:
        for name in ("ocr_max_frames", "text_frames", "text_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f'Argument "{name}" must be at least 1, got {getattr(self, name)}.')
        if not 50 <= self.ocr_min_score <= 100:
            raise ValueError(f'Argument "ocr_min_score" must be in [50, 100], got {self.ocr_min_score}.')

    @classmethod
    def from_config(cls, config: DeidConfig) -> DeidPolicy:
        """The policy of the ``[deid]`` configuration table."""
        return cls(
            retain_modified_dates=config.retain_longitudinal_modified_dates,
            retain_patient_characteristics=config.retain_patient_characteristics,
            retain_device_identity=config.retain_device_identity,
            clean_descriptors=config.clean_descriptors,
            clean_pixel_data=config.clean_pixel_data,
            ocr=config.ocr,
            ocr_max_frames=config.ocr_max_frames,
            ocr_min_score=config.ocr_min_score,
            pixel_masks=config.pixel_masks,
            text_frames=config.text_detection_frames,
            text_threads=config.text_detector_threads or auto_text_threads(),
        )

    @property
    def options(self) -> frozenset[str]:
        """Option letters of :data:`.profile.OPTION_NAMES` in force."""
        flags = {
            "L": self.retain_modified_dates,
            "P": self.retain_patient_characteristics,
            "D": self.retain_device_identity,
            "C": self.clean_descriptors,
        }
        return frozenset(letter for letter, on in flags.items() if on)

    def describe(self) -> Iterator[str]:
        """Lines that state the whole policy, for ``sonoshot anonymize --what-if``."""
        yield f"DICOM PS3.15 {EDITION} Annex E, Basic Application Level Confidentiality Profile"
        for letter in ("L", "P", "D", "C"):
            state = "on" if letter in self.options else "off"
            yield f"option {OPTION_NAMES[letter]}: {state}"
        yield f"option Clean Pixel Data: {'on' if self.clean_pixel_data else 'off'}"
        yield "file meta: rebuilt; 128-byte preamble zeroed"
        yield "private attributes, groups 50xx (curves) and 60xx (overlays): removed"
        yield "UIDs other than well-known and class UIDs, at any depth and in file meta: 2.25.<HMAC-SHA256>"
        yield "Patient ID and Patient's Name: keyed pseudonym P<20 digits>"
        if self.retain_modified_dates:
            yield "DA and DT values (shifted by -1..-3650 days per patient, keyed); TM kept"
        if self.clean_pixel_data:
            yield ("keep area: the Sequence of Ultrasound Regions (clipped when at most 2 px past the image), "
                   "else a device mask (configured, else the deid recipe), else the whole frame (text-only)")
            yield f"configured pixel masks: {len(self.pixel_masks)}"
            yield (f"burned-in text inside the keep area: PP-OCRv4 text detection on {self.text_frames} frame(s), "
                   "union of boxes grown and blanked on every frame")
            yield "cleaned pixels written RLE Lossless; YBR and PALETTE COLOR decoded to RGB"
        ocr = (f"OCR with tesseract of up to {self.ocr_max_frames} other frames, and for text-only no text box "
               "left but scanner readouts" if self.ocr else "OCR off")
        yield f"verifier: header PHI search, UID check, pixel check, {ocr}; any failure quarantines"
        for row in ROWS:
            yield f"({row.tag}) {row.name}: {resolve(row, self.options)}"
