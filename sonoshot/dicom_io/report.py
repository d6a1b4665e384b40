"""report.py
=========

The detector's result for one study as a DICOM Structured Report, built with highdicom from
the *original* received instances, so that it files under the right patient and study.

Pure functions: no file, network or database access. The original datasets carry PHI; it is
copied into the SR (Patient and General Study modules) and nowhere else.

Document
--------
* IOD: **Comprehensive SR** (PS3.3 A.35.3, SOP Class 1.2.840.10008.5.1.4.1.1.88.33), the class
  PACS and viewers list most widely and the one Orthanc Stone's TID 1500 reader requires; it
  carries the SCOORD items of the planar regions.
* Template: **TID 1500** Measurement Report (PS3.16 A.35.4), see ``docs/report.md``.

  - observation context: device observer (TID 1004) naming the algorithm;
  - procedure reported: (310169008, SCT, "Ultrasonography");
  - one TID 1501 measurement group for the study: anomaly score and threshold (TID 300 NUM,
    unit (1, UCUM, "no units")), the verdict as a qualitative evaluation
    (121071, DCM, "Finding") = (17621005, SCT, "Normal") | (263654008, SCT, "Abnormal"),
    and the algorithm (TID 4019: name, version, parameters ``backbone=…``,
    ``bundle_sha256=…`` and, for the demo detector, ``description=…``);
  - one TID 1501 group per evaluated instance: its score, and the instance as the group's
    source image (SOP Class, SOP Instance, frame numbers for multi-frame images);
  - one **TID 1410** planar ROI group per anomalous region of a flagged frame: the frame's
    score, and a closed POLYLINE (111030, DCM, "Image Region") SELECTED FROM the instance and
    frame; the image item is named (111040, DCM, "Original Source"), the name Orthanc Stone's
    reader needs before it draws a region (highdicom's default, (260753009, SCT, "Source"), is
    ignored there);
  - the TID 1500 (C0034375, UMLS, "Qualitative Evaluations") container with TEXT items:
    the not-for-diagnostic-use statement, the detector's description when it has one, and one
    item per instance that was not evaluated.

* SOP Instance UID: a 2.25 UID (PS3.5 B.2) derived from the study UID, the bundle SHA-256, the
  threshold and the sorted evaluated SOP Instance UIDs. Re-sending the same result stores the
  same instance again (no duplicate in the PACS); a result over late instances, another bundle
  or another threshold gets a new UID, and references its predecessor through the Predecessor
  Documents Sequence (PS3.3 C.17.2.3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UltrasoundMultiFrameImageStorage

from sonoshot.dicom_io.documents import (
    DISCLAIMER,
    NOT_EVALUATED,
    PROCEDURE,
    QUALITATIVE_EVALUATIONS,
    PRIVATE_SCHEME,
    PredecessorRef,
    add_qualitative_evaluations,
    algorithm,
    check_sha256,
    check_str,
    check_uid,
    check_unit_interval,
    children,
    comprehensive_sr,
    evidence_of,
    frame_numbers,
    header_of,
    key_of,
    name_uid,
    num,
    observation_context,
    one,
    originals_by_uid,
    parse_measurement_report,
    template_of,
    tuple_of,
)

__all__ = [
    "DISCLAIMER",
    "ImageScoreRef",
    "PredecessorRef",
    "QuarantinedRef",
    "RegionRef",
    "StudyResult",
    "VerdictValues",
    "build_report",
    "read_result",
    "report_series_instance_uid",
    "report_sop_instance_uid",
]

SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "sonoshot anomaly detection - not for diagnostic use"
ANOMALY_SCORE = hd.sr.CodedConcept("anomaly-score", PRIVATE_SCHEME, "Anomaly score")
ANOMALY_THRESHOLD = hd.sr.CodedConcept("anomaly-thresh", PRIVATE_SCHEME, "Anomaly score threshold")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
FINDING = codes.DCM.Finding  # (121071, DCM, "Finding")
ORIGINAL_SOURCE = hd.sr.CodedConcept("111040", "DCM", "Original Source")
STUDY_GROUP = "study"

_PARAM = re.compile(r"^(backbone|bundle_sha256|description)=(.*)$", re.DOTALL)


class VerdictValues(Enum):
    """The study verdict, coded as SNOMED CT in the report."""

    NORMAL = "normal"
    ABNORMAL = "abnormal"


VERDICT_CODES: dict[VerdictValues, hd.sr.CodedConcept] = {
    VerdictValues.NORMAL: hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    VerdictValues.ABNORMAL: hd.sr.CodedConcept("263654008", "SCT", "Abnormal"),
}


@dataclass(frozen=True)
class RegionRef:
    """One anomalous area of one scored frame, as a closed polygon.

    Parameters
    ----------
    frame : int or None
        1-based frame number for a multi-frame instance; None for a single-frame one.
    score : float
        The frame's anomaly score in [0, 1].
    points : Sequence[tuple[float, float]]
        (column, row) vertices in the instance's pixel coordinates (PS3.3 C.18.6.1.1: (0, 0)
        is the top-left corner of the top-left pixel), at least three distinct ones, closed:
        the last equals the first. Stored as float32 (the SCOORD's FL Graphic Data).

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the frame is below 1, the score is outside [0, 1], or the points are not a closed
        polygon of finite, non-negative coordinates.
    """

    frame: int | None
    score: float
    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if self.frame is not None:
            if isinstance(self.frame, bool) or not isinstance(self.frame, int):
                raise TypeError(f'Argument "frame" must be an int or None, got {type(self.frame).__name__}.')
            if self.frame < 1:
                raise ValueError(f'Argument "frame" must be >= 1, got {self.frame}.')
        object.__setattr__(self, "score", check_unit_interval("score", self.score))
        try:
            points = np.asarray(self.points, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError('Argument "points" must be a sequence of (column, row) number pairs.') from exc
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f'Argument "points" must hold (column, row) pairs, got shape {points.shape}.')
        if not (np.isfinite(points).all() and (points >= 0).all()):
            raise ValueError('Argument "points" must hold finite, non-negative coordinates.')
        if len(points) < 4 or not np.array_equal(points[0], points[-1]) or len(np.unique(points, axis=0)) < 3:
            raise ValueError('Argument "points" must be a closed polygon: three or more distinct '
                             "vertices and the first repeated last.")
        object.__setattr__(self, "points", tuple((float(c), float(r)) for c, r in points))


@dataclass(frozen=True)
class ImageScoreRef:
    """The anomaly score of one evaluated source instance.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid, series_instance_uid : str
        The original instance (not the de-identified working copy).
    score : float
        Image anomaly score in [0, 1].
    frames : tuple[int, ...]
        1-based frame numbers that were scored, for multi-frame instances (PS3.3 C.7.6.6);
        empty for single-frame instances.
    regions : tuple[RegionRef, ...]
        Anomalous areas of its flagged frames (each on one of ``frames``, or frame None for a
        single-frame instance).

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a UID is malformed, the score is outside [0, 1], a frame number is below 1 or
        repeated, or a region is on a frame that was not scored.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    score: float
    frames: tuple[int, ...] = ()
    regions: tuple[RegionRef, ...] = ()

    def __post_init__(self) -> None:
        check_uid("sop_class_uid", self.sop_class_uid)
        check_uid("sop_instance_uid", self.sop_instance_uid)
        check_uid("series_instance_uid", self.series_instance_uid)
        object.__setattr__(self, "score", check_unit_interval("score", self.score))
        frames = tuple_of("frames", self.frames, int)
        if any(isinstance(f, bool) or f < 1 for f in frames):
            raise ValueError(f'Argument "frames" must hold frame numbers >= 1, got {frames}.')
        if len(set(frames)) != len(frames):
            raise ValueError(f'Argument "frames" must not repeat a frame number, got {frames}.')
        object.__setattr__(self, "frames", tuple(sorted(frames)))
        regions = tuple_of("regions", self.regions, RegionRef)
        for region in regions:
            if (region.frame is None) != (not frames) or (frames and region.frame not in frames):
                raise ValueError(f'Argument "regions": a region on frame {region.frame} but the scored frames '
                                 f"are {frames or 'none (single frame)'}.")
        object.__setattr__(self, "regions", regions)


@dataclass(frozen=True)
class QuarantinedRef:
    """An instance of the study that was left out of the evaluation, and why (no PHI).

    Raises
    ------
    TypeError, ValueError
        If ``sop_instance_uid`` is not a UID or ``reason`` is not a non-empty str.
    """

    sop_instance_uid: str
    reason: str

    def __post_init__(self) -> None:
        check_uid("sop_instance_uid", self.sop_instance_uid)
        check_str("reason", self.reason, 1024)


@dataclass(frozen=True)
class StudyResult:
    """The detector's result for one study: everything the report states.

    Parameters
    ----------
    study_instance_uid : str
        The original Study Instance UID.
    score : float
        Study anomaly score in [0, 1].
    verdict : VerdictValues | str
        ``"normal"`` or ``"abnormal"``; must agree with ``score`` and ``threshold``
        (abnormal above the threshold, normal below it; either at the threshold).
    threshold : float
        Decision threshold in [0, 1].
    image_scores : Sequence[ImageScoreRef]
        At least one evaluated instance, each once.
    quarantined : Sequence[QuarantinedRef]
        Instances of the study that were not evaluated (none of them in ``image_scores``).
    bundle_sha256 : str
        SHA-256 of the detector bundle, 64 lowercase hex digits.
    backbone, algorithm_name, algorithm_version : str
        Identification of the algorithm (TID 4019); ``algorithm_name`` at most 64 characters.
    description : str
        What the detector is, for those who read the report (the demo detector says so);
        empty for a site's own bundle.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an argument has a wrong value, or the verdict contradicts score and threshold.
    """

    study_instance_uid: str
    score: float
    verdict: VerdictValues | str
    threshold: float
    image_scores: Sequence[ImageScoreRef]
    quarantined: Sequence[QuarantinedRef]
    bundle_sha256: str
    backbone: str
    algorithm_name: str
    algorithm_version: str
    description: str = ""

    def __post_init__(self) -> None:
        check_uid("study_instance_uid", self.study_instance_uid)
        score = check_unit_interval("score", self.score)
        threshold = check_unit_interval("threshold", self.threshold)
        if not isinstance(self.verdict, (str, VerdictValues)):
            raise TypeError('Argument "verdict" must be a VerdictValues or str.')
        try:
            verdict = VerdictValues(self.verdict)
        except ValueError:
            raise ValueError(
                f'Argument "verdict" must be one of {[v.value for v in VerdictValues]}, got {self.verdict!r}.'
            ) from None
        if (verdict is VerdictValues.NORMAL and score > threshold) or (
            verdict is VerdictValues.ABNORMAL and score < threshold
        ):
            raise ValueError(
                f'Argument "verdict" ({verdict.value}) contradicts score {score} and threshold {threshold}.'
            )
        images = tuple_of("image_scores", self.image_scores, ImageScoreRef)
        if not images:
            raise ValueError('Argument "image_scores" must hold at least one evaluated instance.')
        evaluated = [i.sop_instance_uid for i in images]
        if len(set(evaluated)) != len(evaluated):
            raise ValueError('Argument "image_scores" must name each instance once.')
        quarantined = tuple_of("quarantined", self.quarantined, QuarantinedRef)
        if set(evaluated) & {q.sop_instance_uid for q in quarantined}:
            raise ValueError('Argument "quarantined" names an instance that is also in "image_scores".')
        check_sha256("bundle_sha256", self.bundle_sha256)
        check_str("backbone", self.backbone, 1024)
        check_str("algorithm_name", self.algorithm_name, 64)
        check_str("algorithm_version", self.algorithm_version, 64)
        if not isinstance(self.description, str):
            raise TypeError(f'Argument "description" must be a str, got {type(self.description).__name__}.')
        for name, value in (("score", score), ("threshold", threshold), ("verdict", verdict),
                            ("image_scores", images), ("quarantined", quarantined)):
            object.__setattr__(self, name, value)


def report_sop_instance_uid(result: StudyResult) -> str:
    """The deterministic SOP Instance UID of the report for ``result`` (PS3.5 B.2, 2.25 form).

    Derived from the study UID, bundle hash, threshold and sorted evaluated instance UIDs.
    """
    evaluated = sorted(i.sop_instance_uid for i in result.image_scores)
    return name_uid("sr", result.study_instance_uid, result.bundle_sha256, repr(result.threshold), *evaluated)


def report_series_instance_uid(result: StudyResult) -> str:
    """The deterministic Series Instance UID of reports for one study and bundle."""
    return name_uid("sr-series", result.study_instance_uid, result.bundle_sha256)


def _evidence(originals: Sequence[Dataset], result: StudyResult) -> list[Dataset]:
    by_uid = originals_by_uid(originals, result.study_instance_uid)
    evidence = []
    for image in result.image_scores:
        ds = evidence_of(by_uid, image.sop_instance_uid, image.sop_class_uid, image.series_instance_uid)
        frames = int(ds.get("NumberOfFrames") or 1)
        if image.frames and (ds.get("NumberOfFrames") is None or max(image.frames) > frames):
            raise ValueError(
                f'Argument "result": frames {image.frames} of {image.sop_instance_uid} are not in '
                f"the instance's (0028,0008) Number of Frames ({ds.get('NumberOfFrames')})."
            )
        for region in image.regions:
            columns, rows = zip(*region.points)
            if max(columns) > int(ds.Columns) or max(rows) > int(ds.Rows):
                raise ValueError(f'Argument "result": a region of {image.sop_instance_uid} lies outside its '
                                 f"{ds.Columns} x {ds.Rows} pixels.")
        evidence.append(header_of(ds))
    return evidence


def _algorithm(result: StudyResult) -> hd.sr.AlgorithmIdentification:
    parameters = [f"backbone={result.backbone}", f"bundle_sha256={result.bundle_sha256}"]
    if result.description:
        parameters.append(f"description={result.description}")
    return algorithm(result.algorithm_name, result.algorithm_version, parameters)


def _tracking(result: StudyResult, label: str) -> hd.sr.TrackingIdentifier:
    uid = name_uid("tracking", report_sop_instance_uid(result), label)
    return hd.sr.TrackingIdentifier(uid=uid, identifier=label)


def _score(value: float, name: hd.sr.CodedConcept = ANOMALY_SCORE) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=value, unit=NO_UNITS)  # TID 300


class OriginalSourceImage(hd.sr.SourceImageForRegion):
    """The image a region is SELECTED FROM, named (111040, DCM, "Original Source").

    Orthanc Stone draws a TID 1410 region only when its image item carries this name (see the
    module docstring); everything else is highdicom's :class:`~highdicom.sr.SourceImageForRegion`.
    """

    def __init__(self, referenced_sop_class_uid: str, referenced_sop_instance_uid: str,
                 referenced_frame_numbers: Sequence[int] | None = None) -> None:
        super().__init__(referenced_sop_class_uid, referenced_sop_instance_uid, referenced_frame_numbers)
        self.ConceptNameCodeSequence = [ORIGINAL_SOURCE]


def load_standard_tables() -> None:
    """Have highdicom read its tables of the DICOM standard now, at start-up.

    It reads them the first time a report names a region (the multi-frame check of
    :class:`highdicom.sr.ImageRegion`): 0.7 s of pure Python building about 64 MB of objects.
    Inside the first study, that holds the interpreter lock while instances arrive, and the
    tables are left to every later full garbage collection; before the daemon's
    ``gc.freeze()`` they are neither.
    """
    hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT,
                      graphic_data=np.zeros((1, 2), np.float32),
                      source_image=OriginalSourceImage(UltrasoundMultiFrameImageStorage, "1.2.3"))


def _region_group(result: StudyResult, image: ImageScoreRef, index: int, region: RegionRef,
                  algorithm_id: hd.sr.AlgorithmIdentification) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    frames = [region.frame] if region.frame is not None else None
    source = OriginalSourceImage(image.sop_class_uid, image.sop_instance_uid, frames)
    where = f"frame {region.frame}" if region.frame is not None else "image"
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(  # TID 1410
        tracking_identifier=_tracking(result, f"region {index} {where} {image.sop_instance_uid}"),
        referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                            graphic_data=np.asarray(region.points, dtype=np.float32),
                                            source_image=source),
        algorithm_id=algorithm_id,
        measurements=[_score(region.score)],
    )


def _content(result: StudyResult) -> hd.sr.MeasurementReport:
    algorithm_id = _algorithm(result)
    groups: list[Any] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(  # TID 1501, the study
            tracking_identifier=_tracking(result, STUDY_GROUP),
            algorithm_id=algorithm_id,
            measurements=[_score(result.score), _score(result.threshold, ANOMALY_THRESHOLD)],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(name=FINDING, value=VERDICT_CODES[VerdictValues(result.verdict)])
            ],
        )
    ]
    for image in result.image_scores:  # TID 1501, one per evaluated instance
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(result, f"image {image.sop_instance_uid}"),
                algorithm_id=algorithm_id,
                measurements=[_score(image.score)],
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup(
                        referenced_sop_class_uid=image.sop_class_uid,
                        referenced_sop_instance_uid=image.sop_instance_uid,
                        referenced_frame_numbers=list(image.frames) or None,
                    )
                ],
            )
        )
    for image in result.image_scores:  # TID 1410, one per region
        groups += [_region_group(result, image, n, region, algorithm_id)
                   for n, region in enumerate(image.regions, start=1)]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(result.algorithm_name, result.algorithm_version,
                                                result.bundle_sha256),
        procedure_reported=PROCEDURE, imaging_measurements=groups,
    )
    add_qualitative_evaluations(report, [result.description] if result.description else [],
                                [(q.sop_instance_uid, q.reason) for q in result.quarantined])
    return report


def build_report(
    originals: Sequence[Dataset],
    result: StudyResult,
    predecessor: PredecessorRef | None = None,
) -> hd.sr.ComprehensiveSR:
    """Build the validated Comprehensive SR for ``result``, in the original study.

    Parameters
    ----------
    originals : Sequence[pydicom.dataset.Dataset]
        The received (not de-identified) instances of the study, pixel data optional; must
        contain every evaluated instance. Patient and study attributes are taken from the
        first evaluated instance. Other instances (e.g. quarantined ones) are ignored.
    result : StudyResult
        What the report states.
    predecessor : PredecessorRef, optional
        The report this one supersedes; its instance number is incremented.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        Explicit VR Little Endian, with the deterministic SOP Instance UID
        :func:`report_sop_instance_uid` and Series Instance UID
        :func:`report_series_instance_uid`.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an original is of another study, an evaluated instance is missing from
        ``originals`` or disagrees with it, a region lies outside its image, or
        ``predecessor`` is this very report.
    """
    if not isinstance(result, StudyResult):
        raise TypeError('Argument "result" must be a StudyResult.')
    evidence = _evidence(originals, result)
    return comprehensive_sr(
        evidence, _content(result), result.study_instance_uid,
        (report_series_instance_uid(result), SERIES_NUMBER, SERIES_DESCRIPTION),
        report_sop_instance_uid(result), predecessor, result.algorithm_name,
    )


def _regions(groups: Sequence[Dataset]) -> dict[str, list[RegionRef]]:
    """The TID 1410 regions of a report, by the SOP Instance UID they are selected from."""
    found: dict[str, list[RegionRef]] = {}
    for group in groups:
        if template_of(group) != "1410":
            continue
        scoord = one(group, codes.DCM.ImageRegion)
        (image,) = scoord.ContentSequence
        ref = image.ReferencedSOPSequence[0]
        frames = frame_numbers(ref.get("ReferencedFrameNumber"))
        points = np.asarray(scoord.GraphicData, dtype=np.float32).reshape(-1, 2)
        found.setdefault(str(ref.ReferencedSOPInstanceUID), []).append(
            RegionRef(frame=frames[0] if frames else None, score=num(group, ANOMALY_SCORE),
                      points=tuple(map(tuple, points))))
    return found


def read_result(dataset: Dataset) -> StudyResult:
    """Read back the :class:`StudyResult` stated by a report from :func:`build_report`.

    The document is first parsed by highdicom (``ComprehensiveSR.from_dataset``), which checks
    the SR structure; the result is then validated like any :class:`StudyResult`.

    Raises
    ------
    TypeError
        If ``dataset`` is not a pydicom Dataset.
    ValueError
        If it is not a sonoshot TID 1500 Comprehensive SR, or what it states is invalid.
    """
    sr = parse_measurement_report(dataset)
    root = sr.content[0]
    try:
        groups = one(root, codes.DCM.ImagingMeasurements).ContentSequence
        series = {uid: s for _study, s, uid, _cls in sr.get_evidence()}
        regions = _regions(groups)
        study = None
        image_scores = []
        for group in groups:
            if template_of(group) == "1410":
                continue
            label = one(group, codes.DCM.TrackingIdentifier).TextValue
            if label == STUDY_GROUP:
                study = group
                continue
            ref = one(group, codes.DCM.SourceOfMeasurement).ReferencedSOPSequence[0]
            uid = str(ref.ReferencedSOPInstanceUID)
            image_scores.append(ImageScoreRef(
                sop_class_uid=str(ref.ReferencedSOPClassUID),
                sop_instance_uid=uid,
                series_instance_uid=str(series[uid]),
                score=num(group, ANOMALY_SCORE),
                frames=frame_numbers(ref.get("ReferencedFrameNumber")),
                regions=tuple(regions.get(uid, ())),
            ))
        if study is None:
            raise ValueError("no study measurement group")
        code = one(study, FINDING).ConceptCodeSequence[0]
        verdict = next(v for v, c in VERDICT_CODES.items()
                       if key_of(c) == (code.CodeValue, code.CodingSchemeDesignator))
        parameters = dict(
            _PARAM.match(p.TextValue).groups()  # type: ignore[union-attr]
            for p in children(study, codes.DCM.AlgorithmParameters)
        )
        evaluations = one(root, QUALITATIVE_EVALUATIONS)
        quarantined = tuple(
            QuarantinedRef(*t.TextValue.split(": ", 1)) for t in children(evaluations, NOT_EVALUATED)
        )
        return StudyResult(
            study_instance_uid=str(dataset.StudyInstanceUID),
            score=num(study, ANOMALY_SCORE),
            verdict=verdict,
            threshold=num(study, ANOMALY_THRESHOLD),
            image_scores=tuple(image_scores),
            quarantined=quarantined,
            bundle_sha256=parameters["bundle_sha256"],
            backbone=parameters["backbone"],
            algorithm_name=one(study, codes.DCM.AlgorithmName).TextValue,
            algorithm_version=one(study, codes.DCM.AlgorithmVersion).TextValue,
            description=parameters.get("description", ""),
        )
    except (AttributeError, IndexError, KeyError, StopIteration, TypeError, ValueError) as exc:
        raise ValueError(f'Argument "dataset" is not a sonoshot report: {exc!r}.') from exc

