"""prompts.py
==========

The clinical text bank: short sonographic descriptions per class (normal / abnormal), general
and per organ, each expanded with a few report-style templates. With a text tower, the
embeddings of all of a class's sentences are averaged (prompt ensembling) into one anchor per
class; the anchors make the zero-shot detector and pull few-shot prototypes toward
clinically meaningful directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASSES = ("normal", "abnormal")
ORGANS = ("general", "breast", "thyroid", "liver", "kidney")

TEMPLATES = (
    "{}",
    "an ultrasound image showing {}",
    "a B-mode sonogram of {}",
    "ultrasound findings: {}",
)

BANK: dict[str, dict[str, tuple[str, ...]]] = {
    "general": {
        "normal": (
            "normal tissue with homogeneous echotexture",
            "no focal lesion",
            "unremarkable sonographic appearance",
            "normal anatomy without mass or collection",
        ),
        "abnormal": (
            "a focal lesion",
            "an abnormal mass with heterogeneous echogenicity",
            "a hypoechoic lesion with irregular margins",
            "a suspicious abnormality with posterior acoustic shadowing",
        ),
    },
    "breast": {
        "normal": (
            "normal breast parenchyma with fibroglandular tissue and fat lobules",
            "a normal breast without a mass",
        ),
        "abnormal": (
            "a breast mass",
            "a hypoechoic breast mass with angular or spiculated margins",
            "an oval circumscribed breast lesion such as a fibroadenoma",
            "a breast tumor taller than wide with posterior shadowing",
        ),
    },
    "thyroid": {
        "normal": (
            "a normal thyroid gland with homogeneous echotexture",
            "a thyroid lobe without nodules",
        ),
        "abnormal": (
            "a thyroid nodule",
            "a solid hypoechoic thyroid nodule with microcalcifications",
        ),
    },
    "liver": {
        "normal": (
            "a normal liver with smooth contour and homogeneous parenchyma",
            "liver parenchyma without focal lesion",
        ),
        "abnormal": (
            "a focal liver lesion",
            "a hypoechoic or hyperechoic liver mass",
            "a coarse heterogeneous liver with nodules",
        ),
    },
    "kidney": {
        "normal": (
            "a normal kidney with preserved corticomedullary differentiation",
            "a kidney without hydronephrosis, stone or mass",
        ),
        "abnormal": (
            "a renal mass",
            "hydronephrosis with a dilated collecting system",
            "a kidney stone with acoustic shadowing",
            "a complex renal cyst",
        ),
    },
}


def class_prompts(organs: Sequence[str] = ()) -> dict[str, list[str]]:
    """All sentences per class for the general set plus ``organs`` (empty: every organ).

    Raises
    ------
    ValueError
        If an organ is not in :data:`ORGANS`.
    """
    unknown = [o for o in organs if o not in ORGANS]
    if unknown:
        raise ValueError(f'Argument "organs" has unknown entries {unknown}; expected {ORGANS}.')
    chosen = ["general", *(organs or ORGANS[1:])]
    return {
        cls: [t.format(p) for organ in dict.fromkeys(chosen) for p in BANK[organ][cls]
              for t in TEMPLATES]
        for cls in CLASSES
    }


def ensemble(text_embeddings: np.ndarray) -> np.ndarray:
    """Average L2-normalised sentence embeddings into one normalised anchor."""
    mean = text_embeddings.mean(axis=0)
    return mean / np.linalg.norm(mean)
