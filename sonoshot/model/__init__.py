"""model
=====

Everything that learns or scores: backbones, the clinical prompt bank, the projection head,
the patch memory and its anomaly maps, the detector (fit / score / scope / bundle) and the
k-shot evaluation.
"""

from sonoshot.model.backbones import Backbone, BackboneError, create_backbone
from sonoshot.model.detector import (Detector, DetectorError, ImageScore, demo_bundle_path,
                                     fit_detector, load_bundle, load_detector, save_bundle)
from sonoshot.model.maps import FrameMap
from sonoshot.model.scope import ScopeDecision, ScopeError, check_scope, parse_scope

__all__ = [
    "Backbone",
    "BackboneError",
    "Detector",
    "DetectorError",
    "FrameMap",
    "ImageScore",
    "ScopeDecision",
    "ScopeError",
    "check_scope",
    "create_backbone",
    "demo_bundle_path",
    "fit_detector",
    "load_bundle",
    "load_detector",
    "parse_scope",
    "save_bundle",
]
