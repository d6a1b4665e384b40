"""textdetect.py
=============

Find burned-in text on a frame with a deep-learning text detector: PP-OCRv4's detection model
(a DB, "differentiable binarisation", network) as shipped inside the ``rapidocr-onnxruntime``
wheel, run by onnxruntime on the CPU. The detector does not read the text and needs no PHI
string: it marks where text is, so a name the header does not know about is found too.

The network gives a per-pixel text probability; connected areas above :data:`PIXEL_THRESHOLD`
are text kernels (DB predicts text shrunk towards its centre line), each scored by its mean
probability and grown back by :func:`grow` before blanking. Each frame is seen twice: as it is,
and as a white top-hat of its brightest channel (thin bright strokes stand out of speckle,
which finds dim text over tissue that the plain view misses). Kernels taller than
:data:`MAX_KERNEL_HEIGHT` are not text lines (the network marks a rectangle of speckle cut out
on black as one large "text block") and are dropped. The model is loaded once per process
(:func:`text_detector`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

#: Probability above which a pixel belongs to a text kernel (PP-OCR's default ``thresh``).
PIXEL_THRESHOLD = 0.3
#: Mean kernel probability at which a box counts as text for cleaning (more sensitive than the
#: verifier's :data:`VERIFY_SCORE`, so a box near the threshold is blanked, not left to chance).
CLEAN_SCORE = 0.5
#: Mean kernel probability at which the verifier counts a remaining box as text.
VERIFY_SCORE = 0.6
#: Frames are scaled so that text of 10 px is at least this tall for the network.
SCALE = 1.5
#: Longest side, in pixels, the network sees (larger frames are scaled down to it).
MAX_SIDE = 1920
#: Kernel height, in frame pixels, above which a component is not a line of burned-in text.
MAX_KERNEL_HEIGHT = 40
_MEAN_STD = 0.5


class TextDetectorUnavailableError(RuntimeError):
    """The detection model or onnxruntime cannot be loaded: cleaning fails closed."""


@dataclass(frozen=True)
class TextBox:
    """A detected text box, inclusive pixel bounds in frame coordinates, and its score."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def grow(box: TextBox, rows: int, columns: int, margin: int) -> tuple[int, int, int, int]:
    """The blanking box of a text kernel: grown by the DB unclip distance plus ``margin``.

    DB kernels are shrunk towards the centre line; growing by the kernel height vertically and
    twice that horizontally covers ascenders, descenders, anti-aliased edges and the ends of a
    line whose first or last characters scored lower.
    """
    height = box.y1 - box.y0 + 1
    px, py = 2 * height + margin, height + margin
    return (max(box.x0 - px, 0), max(box.y0 - py, 0), min(box.x1 + px, columns - 1), min(box.y1 + py, rows - 1))


def model_path() -> Path:
    """The PP-OCRv4 detection ONNX file inside the installed ``rapidocr-onnxruntime`` wheel.

    Raises
    ------
    TextDetectorUnavailableError
        If the package or the model file is missing.
    """
    try:
        import rapidocr_onnxruntime
    except ImportError as exc:
        raise TextDetectorUnavailableError("rapidocr-onnxruntime is not installed: text detection fails closed") from exc
    path = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    if not path.is_file():
        raise TextDetectorUnavailableError(f"text detection model missing: {path.name}")
    return path


def to_rgb8(frame: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view of a decoded frame (monochrome stacked, 16-bit reduced to its top byte)."""
    if frame.dtype != np.uint8:
        shift = max(int(frame.max()).bit_length() - 8, 0) if frame.size else 0
        frame = (np.clip(frame, 0, None) >> shift).clip(0, 255).astype(np.uint8)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return frame


class TextDetector:
    """PP-OCRv4 text detection on single frames.

    Parameters
    ----------
    threads : int
        onnxruntime intra-op threads (at least 1).

    Raises
    ------
    ValueError
        If ``threads`` is below 1.
    TextDetectorUnavailableError
        If onnxruntime or the model cannot be loaded.
    """

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f'Argument "threads" must be at least 1, got {threads}.')
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise TextDetectorUnavailableError("onnxruntime is not installed: text detection fails closed") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # a pass is a short burst next to the receiver and the model: idle threads sleep at once
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad model file
            raise TextDetectorUnavailableError(f"text detection model cannot be loaded ({type(exc).__name__})") from exc
        self._input = self._session.get_inputs()[0].name
        self._lock = threading.Lock()

    def probability(self, frame: np.ndarray) -> np.ndarray:
        """Per-pixel text probability at the network's resolution (see :func:`network_size`)."""
        rgb = to_rgb8(frame)
        height, width = network_size(*rgb.shape[:2])
        image = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR), dtype=np.float32)
        tensor = ((image / 255.0 - _MEAN_STD) / _MEAN_STD).transpose(2, 0, 1)[None]
        with self._lock:  # one session, used from any thread
            return self._session.run(None, {self._input: np.ascontiguousarray(tensor)})[0][0, 0]

    def detect(self, frame: np.ndarray, min_score: float = CLEAN_SCORE, views: int = 2) -> list[TextBox]:
        """Text boxes on ``frame`` (kernel bounds in frame pixels) whose score is ``min_score`` or more.

        ``views`` 2 searches the frame and its top-hat; 1 only the frame.
        """
        rgb = to_rgb8(frame)
        return self._boxes(rgb, min_score) + (self._boxes(top_hat(rgb), min_score) if views == 2 else [])

    def _boxes(self, frame: np.ndarray, min_score: float) -> list[TextBox]:
        rows, columns = frame.shape[:2]
        prob = self.probability(frame)
        labels, _count = ndimage.label(ndimage.binary_dilation(prob > PIXEL_THRESHOLD, np.ones((2, 2), bool)))
        sy, sx = rows / prob.shape[0], columns / prob.shape[1]
        boxes = []
        for number, where in enumerate(ndimage.find_objects(labels), start=1):
            if where is None:
                continue
            score = float(prob[where][labels[where] == number].mean())
            if score < min_score:
                continue
            y, x = where
            if (y.stop - y.start) * sy > MAX_KERNEL_HEIGHT:
                continue
            boxes.append(TextBox(
                int(x.start * sx), int(y.start * sy),
                min(int(np.ceil(x.stop * sx)) - 1, columns - 1), min(int(np.ceil(y.stop * sy)) - 1, rows - 1),
                round(score, 3),
            ))
        return boxes


def top_hat(rgb: np.ndarray) -> np.ndarray:
    """White top-hat (5 × 5) of the brightest channel, doubled, as an RGB image."""
    brightest = rgb.max(axis=2)
    strokes = brightest.astype(np.int16) - ndimage.grey_opening(brightest, size=(5, 5))
    grey = np.clip(strokes * 2, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def network_size(rows: int, columns: int) -> tuple[int, int]:
    """``(height, width)`` the network sees: scaled by :data:`SCALE` (at most :data:`MAX_SIDE`), multiples of 32."""
    scale = min(SCALE, MAX_SIDE / max(rows, columns))
    return (max(32, int(round(rows * scale / 32)) * 32), max(32, int(round(columns * scale / 32)) * 32))


_DETECTOR: TextDetector | None = None
_DETECTOR_LOCK = threading.Lock()


def text_detector(threads: int = 1) -> TextDetector:
    """The process-wide detector, loaded on first use (``threads`` applies to that first load).

    Raises
    ------
    TextDetectorUnavailableError
        If the model cannot be loaded.
    """
    global _DETECTOR
    with _DETECTOR_LOCK:
        if _DETECTOR is None:
            _DETECTOR = TextDetector(threads)
        return _DETECTOR
