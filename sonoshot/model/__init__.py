"""model
=====

Everything that learns or scores: backbones, the clinical prompt bank, the projection head,
the patch memory,
the detector (fit / score / bundle) and the k-shot evaluation.
"""

from sonoshot.model.backbones import Backbone, BackboneError, create_backbone
from sonoshot.model.detector import (Detector, DetectorError, ImageScore, fit_detector,
                                     load_bundle, load_detector, save_bundle)

__all__ = [
    "Backbone",
    "BackboneError",
    "Detector",
    "DetectorError",
    "ImageScore",
    "create_backbone",
    "fit_detector",
    "load_bundle",
    "load_detector",
    "save_bundle",
]
