"""report.py
=========

The detector's result for one study as a DICOM Structured Report, built with highdicom from
the *original* received instances, so that it files under the right patient and study.

Pure functions: no file, network or database access. The original datasets carry PHI; it is
copied into the SR (Patient and General Study modules) and nowhere else.

Document
--------
* IOD: **Comprehensive SR** (PS3.3 A.35.3, SOP Class 1.2.840.10008.5.1.4.1.1.88.33). TID 1500
  may be encoded in Enhanced SR, Comprehensive SR or Comprehensive 3D SR (PS3.16 TID 1500,
  "Template usage"). Our tree (CONTAINER, CODE, NUM, TEXT, UIDREF, IMAGE, no spatial
  coordinates) would fit Enhanced SR as well; Comprehensive SR is chosen because it is the SR
  storage class that PACS and viewers list most widely in their conformance statements, it is
  what highdicom's TID 1500 examples use, and it leaves room for by-reference relationships and
  region-level SCOORD items later without a change of SOP class.
* Template: **TID 1500** Measurement Report (PS3.16 A.35.4), see ``docs/report.md``.

  - observation context: device observer (TID 1004) naming the algorithm;
  - procedure reported: (310169008, SCT, "Ultrasonography");
  - one TID 1501 measurement group for the study: anomaly score and threshold (TID 300 NUM,
    unit (1, UCUM, "no units")), the verdict as a qualitative evaluation
    (121071, DCM, "Finding") = (17621005, SCT, "Normal") | (263654008, SCT, "Abnormal"),
    and the algorithm (TID 4019: name, version, parameters ``backbone=…``,
    ``bundle_sha256=…``);
  - one TID 1501 group per evaluated instance: its score, and the instance as the group's
    source image (SOP Class, SOP Instance, frame numbers for multi-frame images);
  - the TID 1500 (C0034375, UMLS, "Qualitative Evaluations") container with TEXT items:
    the not-for-diagnostic-use statement, and one item per quarantined (not evaluated) instance.

* Verification Flag UNVERIFIED, Completion Flag COMPLETE, Preliminary Flag PRELIMINARY
  (PS3.3 C.17.2).
* SOP Instance UID: a 2.25 UID (PS3.5 B.2) derived from the study UID, the bundle SHA-256, the
  threshold and the sorted evaluated SOP Instance UIDs. Re-sending the same result stores the
  same instance again (no duplicate in the PACS); a result over late instances, another bundle
  or another threshold gets a new UID, and references its predecessor through the Predecessor
  Documents Sequence (PS3.3 C.17.2.3).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage

from sonoshot import __version__

MANUFACTURER = "sonoshot"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "sonoshot anomaly detection - not for diagnostic use"
DISCLAIMER = (
    "Research use only, not for diagnostic use: output of an automated anomaly detection "
    "algorithm, not verified by a physician."
)

# Private coding scheme for concepts without a standard code (PS3.16 8.2: designators starting
# with "99" are private), declared in the Coding Scheme Identification Sequence (PS3.3 C.12.1).
PRIVATE_SCHEME = "99SONOSHOT"
ANOMALY_SCORE = hd.sr.CodedConcept("anomaly-score", PRIVATE_SCHEME, "Anomaly score")
ANOMALY_THRESHOLD = hd.sr.CodedConcept("anomaly-thresh", PRIVATE_SCHEME, "Anomaly score threshold")
NOT_EVALUATED = hd.sr.CodedConcept("not-evaluated", PRIVATE_SCHEME, "Instance not evaluated")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
FINDING = codes.DCM.Finding  # (121071, DCM, "Finding")
PROCEDURE = codes.SCT.Ultrasonography  # (310169008, SCT, "Ultrasonography")
COMMENT = codes.DCM.Comment  # (121106, DCM, "Comment")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
STUDY_GROUP = "study"
UID_NAMESPACE = uuid.UUID("5f1c8a3e-2b7d-4c59-9a61-0d3e8f6b2c47")  # sonoshot's name-based UIDs, fixed forever

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # PS3.5 9.1, leniently: real devices write leading zeros
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PARAM = re.compile(r"^(backbone|bundle_sha256)=(.*)$")


class VerdictValues(Enum):
    """The study verdict, coded as SNOMED CT in the report."""

    NORMAL = "normal"
    ABNORMAL = "abnormal"


VERDICT_CODES: dict[VerdictValues, hd.sr.CodedConcept] = {
    VerdictValues.NORMAL: hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    VerdictValues.ABNORMAL: hd.sr.CodedConcept("263654008", "SCT", "Abnormal"),
}


def _check_str(name: str, value: Any, max_len: int | None = None) -> None:
    if not isinstance(value, str):
        raise TypeError(f'Argument "{name}" must be a str, got {type(value).__name__}.')
    if not value.strip():
        raise ValueError(f'Argument "{name}" must not be empty.')
    if max_len is not None and len(value) > max_len:
        raise ValueError(f'Argument "{name}" must have at most {max_len} characters, got {len(value)}.')


def _check_uid(name: str, value: Any) -> None:
    _check_str(name, value, 64)
    if not _UID.match(value):
        raise ValueError(f'Argument "{name}" is not a UID: {value!r}.')


def _check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Argument "{name}" must be a number, got {type(value).__name__}.')
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f'Argument "{name}" must be in [0, 1], got {value}.')
    return float(value)


def _tuple_of(name: str, value: Any, cls: type) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f'Argument "{name}" must be a sequence of {cls.__name__}.')
    for item in value:
        if not isinstance(item, cls):
            raise TypeError(f'Items of argument "{name}" must be {cls.__name__}, got {type(item).__name__}.')
    return tuple(value)


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

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a UID is malformed, the score is outside [0, 1] or a frame number is below 1 or
        repeated.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    score: float
    frames: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_uid("sop_class_uid", self.sop_class_uid)
        _check_uid("sop_instance_uid", self.sop_instance_uid)
        _check_uid("series_instance_uid", self.series_instance_uid)
        object.__setattr__(self, "score", _check_unit_interval("score", self.score))
        frames = _tuple_of("frames", self.frames, int)
        if any(isinstance(f, bool) or f < 1 for f in frames):
            raise ValueError(f'Argument "frames" must hold frame numbers >= 1, got {frames}.')
        if len(set(frames)) != len(frames):
            raise ValueError(f'Argument "frames" must not repeat a frame number, got {frames}.')
        object.__setattr__(self, "frames", tuple(sorted(frames)))


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
        _check_uid("sop_instance_uid", self.sop_instance_uid)
        _check_str("reason", self.reason, 1024)


@dataclass(frozen=True)
class PredecessorRef:
    """A report that the new one supersedes (same study), for the Predecessor Documents Sequence.

    Raises
    ------
    TypeError, ValueError
        If a UID is malformed or ``instance_number`` is not a positive int.
    """

    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int = 1
    sop_class_uid: str = ComprehensiveSRStorage

    def __post_init__(self) -> None:
        _check_uid("sop_instance_uid", self.sop_instance_uid)
        _check_uid("series_instance_uid", self.series_instance_uid)
        _check_uid("sop_class_uid", self.sop_class_uid)
        if isinstance(self.instance_number, bool) or not isinstance(self.instance_number, int):
            raise TypeError('Argument "instance_number" must be an int.')
        if self.instance_number < 1:
            raise ValueError(f'Argument "instance_number" must be >= 1, got {self.instance_number}.')

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> PredecessorRef:
        """The reference to an earlier report, e.g. one returned by :func:`build_report`."""
        return cls(
            sop_instance_uid=str(dataset.SOPInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            instance_number=int(dataset.InstanceNumber),
            sop_class_uid=str(dataset.SOPClassUID),
        )


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

    def __post_init__(self) -> None:
        _check_uid("study_instance_uid", self.study_instance_uid)
        score = _check_unit_interval("score", self.score)
        threshold = _check_unit_interval("threshold", self.threshold)
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
        images = _tuple_of("image_scores", self.image_scores, ImageScoreRef)
        if not images:
            raise ValueError('Argument "image_scores" must hold at least one evaluated instance.')
        evaluated = [i.sop_instance_uid for i in images]
        if len(set(evaluated)) != len(evaluated):
            raise ValueError('Argument "image_scores" must name each instance once.')
        quarantined = _tuple_of("quarantined", self.quarantined, QuarantinedRef)
        if set(evaluated) & {q.sop_instance_uid for q in quarantined}:
            raise ValueError('Argument "quarantined" names an instance that is also in "image_scores".')
        _check_str("bundle_sha256", self.bundle_sha256)
        if not _SHA256.match(self.bundle_sha256):
            raise ValueError('Argument "bundle_sha256" must be 64 lowercase hex digits.')
        _check_str("backbone", self.backbone, 1024)
        _check_str("algorithm_name", self.algorithm_name, 64)
        _check_str("algorithm_version", self.algorithm_version, 64)
        for name, value in (("score", score), ("threshold", threshold), ("verdict", verdict),
                            ("image_scores", images), ("quarantined", quarantined)):
            object.__setattr__(self, name, value)


def _uid(*parts: str) -> str:
    """A name-based (SHA-1, version 5) UUID as a 2.25 UID (PS3.5 B.2, ISO/IEC 9834-8)."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, chr(0).join(parts)).int}"


def report_sop_instance_uid(result: StudyResult) -> str:
    """The deterministic SOP Instance UID of the report for ``result`` (PS3.5 B.2, 2.25 form).

    Derived from the study UID, bundle hash, threshold and sorted evaluated instance UIDs.
    """
    evaluated = sorted(i.sop_instance_uid for i in result.image_scores)
    return _uid("sr", result.study_instance_uid, result.bundle_sha256, repr(result.threshold), *evaluated)


def report_series_instance_uid(result: StudyResult) -> str:
    """The deterministic Series Instance UID of reports for one study and bundle."""
    return _uid("sr-series", result.study_instance_uid, result.bundle_sha256)


def _header(original: Dataset) -> Dataset:
    """The original's attributes without pixel data; absent Type 2 patient/study attributes
    become empty (PS3.3 C.7.1.1, C.7.2.1), as highdicom copies them unconditionally."""
    header = Dataset()
    for elem in original:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(elem)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _evidence(originals: Sequence[Dataset], result: StudyResult) -> list[Dataset]:
    if isinstance(originals, Dataset) or not isinstance(originals, Sequence):
        raise TypeError('Argument "originals" must be a sequence of pydicom Dataset.')
    by_uid: dict[str, Dataset] = {}
    for ds in originals:
        if not isinstance(ds, Dataset):
            raise TypeError('Items of argument "originals" must be pydicom Dataset.')
        if ds.get("StudyInstanceUID") != result.study_instance_uid:
            raise ValueError(
                f'Argument "originals": instance {ds.get("SOPInstanceUID")} has (0020,000D) '
                f"Study Instance UID {ds.get('StudyInstanceUID')}, not {result.study_instance_uid}."
            )
        by_uid[str(ds.SOPInstanceUID)] = ds
    evidence = []
    for image in result.image_scores:
        ds = by_uid.get(image.sop_instance_uid)
        if ds is None:
            raise ValueError(f'Argument "originals" lacks evaluated instance {image.sop_instance_uid}.')
        if ds.SOPClassUID != image.sop_class_uid or ds.SeriesInstanceUID != image.series_instance_uid:
            raise ValueError(
                f'Argument "result": SOP Class or Series Instance UID of {image.sop_instance_uid} '
                "differs from the original instance."
            )
        frames = int(ds.get("NumberOfFrames") or 1)
        if image.frames and (ds.get("NumberOfFrames") is None or max(image.frames) > frames):
            raise ValueError(
                f'Argument "result": frames {image.frames} of {image.sop_instance_uid} are not in '
                f"the instance's (0028,0008) Number of Frames ({ds.get('NumberOfFrames')})."
            )
        evidence.append(_header(ds))
    return evidence


def _algorithm(result: StudyResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(  # TID 4019
        name=result.algorithm_name,
        version=result.algorithm_version,
        parameters=[f"backbone={result.backbone}", f"bundle_sha256={result.bundle_sha256}"],
        manufacturer=MANUFACTURER,
    )


def _tracking(result: StudyResult, label: str) -> hd.sr.TrackingIdentifier:
    uid = _uid("tracking", report_sop_instance_uid(result), label)
    return hd.sr.TrackingIdentifier(uid=uid, identifier=label)


def _score(value: float, name: hd.sr.CodedConcept = ANOMALY_SCORE) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=value, unit=NO_UNITS)  # TID 300


def _content(result: StudyResult) -> hd.sr.MeasurementReport:
    algorithm = _algorithm(result)
    device = hd.sr.DeviceObserverIdentifyingAttributes(  # TID 1004
        uid=_uid("device", result.algorithm_name, result.algorithm_version, result.bundle_sha256),
        name=result.algorithm_name,
        manufacturer_name=MANUFACTURER,
        model_name=result.algorithm_version,
    )
    context = hd.sr.ObservationContext(  # TID 1001
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(  # TID 1501, the study
            tracking_identifier=_tracking(result, STUDY_GROUP),
            algorithm_id=algorithm,
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
                algorithm_id=algorithm,
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
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=PROCEDURE, imaging_measurements=groups
    )
    # TID 1500 Qualitative Evaluations container, with TEXT items
    evaluations = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=COMMENT, value=DISCLAIMER, relationship_type="CONTAINS")]
        + [
            hd.sr.TextContentItem(name=NOT_EVALUATED, value=f"{q.sop_instance_uid}: {q.reason}",
                                  relationship_type="CONTAINS")
            for q in result.quarantined
        ]
    )
    report[0].ContentSequence.append(evaluations)
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
        ``originals`` or disagrees with it, or ``predecessor`` is this very report.
    """
    if not isinstance(result, StudyResult):
        raise TypeError('Argument "result" must be a StudyResult.')
    if predecessor is not None and not isinstance(predecessor, PredecessorRef):
        raise TypeError('Argument "predecessor" must be a PredecessorRef or None.')
    evidence = _evidence(originals, result)
    sop_instance_uid = report_sop_instance_uid(result)
    previous = None
    if predecessor is not None:
        if predecessor.sop_instance_uid == sop_instance_uid:
            raise ValueError('Argument "predecessor" is the report being built (same result).')
        ref = Dataset()
        ref.SOPClassUID = predecessor.sop_class_uid
        ref.SOPInstanceUID = predecessor.sop_instance_uid
        ref.SeriesInstanceUID = predecessor.series_instance_uid
        ref.StudyInstanceUID = result.study_instance_uid
        previous = [ref]
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=_content(result),
        series_instance_uid=report_series_instance_uid(result),
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=predecessor.instance_number + 1 if predecessor else 1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,  # Verification Flag UNVERIFIED (PS3.3 C.17.2)
        previous_versions=previous,
        record_evidence=False,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=result.algorithm_name,
        software_versions=__version__,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="sonoshot private concepts",
                responsible_organization=MANUFACTURER,
            )
        ],
    )


def _concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _key(concept: hd.sr.CodedConcept | Any) -> tuple[str, str]:
    return str(concept.value), str(concept.scheme_designator)


def _children(item: Dataset, concept: hd.sr.CodedConcept | Any) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if _concept(c) == _key(concept)]


def _one(item: Dataset, concept: hd.sr.CodedConcept | Any) -> Dataset:
    found = _children(item, concept)
    if len(found) != 1:
        raise ValueError(f"expected one {concept.meaning!r} content item, found {len(found)}")
    return found[0]


def _num(item: Dataset, concept: hd.sr.CodedConcept) -> float:
    value = _one(item, concept).MeasuredValueSequence[0]
    return float(value.get("FloatingPointValue", value.NumericValue))  # FD is exact, DS has 16 chars


def _frames(value: Any) -> tuple[int, ...]:
    if value is None or value == "":
        return ()
    return tuple(int(f) for f in value) if isinstance(value, MultiValue) else (int(value),)


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
    if not isinstance(dataset, Dataset):
        raise TypeError('Argument "dataset" must be a pydicom Dataset.')
    if dataset.get("SOPClassUID") != ComprehensiveSRStorage:
        raise ValueError('Argument "dataset" is not a Comprehensive SR (0008,0016) SOP Class UID.')
    sr = hd.sr.ComprehensiveSR.from_dataset(dataset)
    if not isinstance(sr.content, hd.sr.MeasurementReport):
        raise ValueError('Argument "dataset" does not hold a TID 1500 Measurement Report.')
    root = sr.content[0]
    try:
        groups = _one(root, codes.DCM.ImagingMeasurements).ContentSequence
        series = {uid: s for _study, s, uid, _cls in sr.get_evidence()}
        study = None
        image_scores = []
        for group in groups:
            label = _one(group, codes.DCM.TrackingIdentifier).TextValue
            if label == STUDY_GROUP:
                study = group
                continue
            ref = _one(group, codes.DCM.SourceOfMeasurement).ReferencedSOPSequence[0]
            image_scores.append(ImageScoreRef(
                sop_class_uid=str(ref.ReferencedSOPClassUID),
                sop_instance_uid=str(ref.ReferencedSOPInstanceUID),
                series_instance_uid=str(series[ref.ReferencedSOPInstanceUID]),
                score=_num(group, ANOMALY_SCORE),
                frames=_frames(ref.get("ReferencedFrameNumber")),
            ))
        if study is None:
            raise ValueError("no study measurement group")
        code = _one(study, FINDING).ConceptCodeSequence[0]
        verdict = next(v for v, c in VERDICT_CODES.items()
                       if _key(c) == (code.CodeValue, code.CodingSchemeDesignator))
        parameters = dict(
            _PARAM.match(p.TextValue).groups()  # type: ignore[union-attr]
            for p in _children(study, codes.DCM.AlgorithmParameters)
        )
        evaluations = _one(root, QUALITATIVE_EVALUATIONS)
        quarantined = tuple(
            QuarantinedRef(*t.TextValue.split(": ", 1)) for t in _children(evaluations, NOT_EVALUATED)
        )
        return StudyResult(
            study_instance_uid=str(dataset.StudyInstanceUID),
            score=_num(study, ANOMALY_SCORE),
            verdict=verdict,
            threshold=_num(study, ANOMALY_THRESHOLD),
            image_scores=tuple(image_scores),
            quarantined=quarantined,
            bundle_sha256=parameters["bundle_sha256"],
            backbone=parameters["backbone"],
            algorithm_name=_one(study, codes.DCM.AlgorithmName).TextValue,
            algorithm_version=_one(study, codes.DCM.AlgorithmVersion).TextValue,
        )
    except (AttributeError, IndexError, KeyError, StopIteration, TypeError) as exc:
        raise ValueError(f'Argument "dataset" is not a sonoshot report: {exc!r}.') from exc
