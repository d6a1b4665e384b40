"""not_analysed.py
================

The report for a study the detector did not score: every instance was quarantined, outside
the detector's scope, or processing failed. Without it, the PACS and the radiologist cannot tell
"not analysed" from "not yet".

Same document family as the scored report (:mod:`~sonoshot.dicom_io.report`): a Comprehensive
SR holding a TID 1500 Measurement Report, built with highdicom from the received originals, with
the same observer context, algorithm identification, disclaimer and flags, but no score:

* one TID 1501 group for the study: the qualitative evaluation (111017, DCM, "CAD Processing
  and Findings Summary") = (111245, DCM, "No algorithms succeeded; without findings") (PS3.16
  CID 6047), and the study's reason;
* one TID 1501 group per instance: the instance as its source image and its coded reason,
  (not-analysed-why, 99SONOSHOT, "Reason not analysed") = one of :class:`NotAnalysedReason`;
* Qualitative Evaluations: the disclaimer, the statement :data:`NOT_ANALYSED_STATEMENT`, and the
  PHI-free detail per instance (the de-identifier's or detector's reason).

SOP Instance UID: a 2.25 UID named from the study, the bundle and the sorted (instance, reason)
pairs, so the same outcome sent twice is one instance in the PACS; its own series (9902). A later
scored report supersedes it through the Predecessor Documents Sequence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from sonoshot.dicom_io.documents import (
    NOT_EVALUATED,
    PRIVATE_SCHEME,
    PROCEDURE,
    QUALITATIVE_EVALUATIONS,
    PredecessorRef,
    add_qualitative_evaluations,
    algorithm,
    check_sha256,
    check_str,
    check_uid,
    children,
    comprehensive_sr,
    evidence_of,
    header_of,
    key_of,
    name_uid,
    observation_context,
    one,
    originals_by_uid,
    parse_measurement_report,
    tuple_of,
)

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "sonoshot anomaly detection - not analysed"
NOT_ANALYSED_STATEMENT = "Not analysed: the anomaly detector did not score this study; no result is stated."
SUMMARY = hd.sr.CodedConcept("111017", "DCM", "CAD Processing and Findings Summary")
NO_ALGORITHM_SUCCEEDED = hd.sr.CodedConcept("111245", "DCM", "No algorithms succeeded; without findings")
REASON = hd.sr.CodedConcept("not-analysed-why", PRIVATE_SCHEME, "Reason not analysed")
STUDY_GROUP = "study"


class NotAnalysedReason(Enum):
    """Why an instance was not analysed; the value is the 99SONOSHOT code value (at most 16
    characters, SH)."""

    OUTSIDE_SCOPE = "outside-scope"
    UNREADABLE = "unreadable"
    UNDECODABLE = "undecodable"
    PIXELS_NOT_CLEANED = "pixels-unclean"
    NOT_VERIFIED = "deid-unverified"
    PROCESSING_FAILED = "proc-failed"

    @property
    def meaning(self) -> str:
        """The code meaning."""
        return _MEANINGS[self]

    @property
    def code(self) -> hd.sr.CodedConcept:
        """The coded concept (99SONOSHOT)."""
        return hd.sr.CodedConcept(self.value, PRIVATE_SCHEME, self.meaning)


_MEANINGS = {
    NotAnalysedReason.OUTSIDE_SCOPE: "Outside the detector's scope",
    NotAnalysedReason.UNREADABLE: "Instance could not be read",
    NotAnalysedReason.UNDECODABLE: "Pixel data could not be decoded",
    NotAnalysedReason.PIXELS_NOT_CLEANED: "Burned-in text could not be removed",
    NotAnalysedReason.NOT_VERIFIED: "De-identification could not be verified",
    NotAnalysedReason.PROCESSING_FAILED: "Processing failed",
}


@dataclass(frozen=True)
class NotAnalysedRef:
    """One instance that was not analysed, why (coded) and a PHI-free detail.

    Raises
    ------
    TypeError, ValueError
        If a UID is malformed, ``reason`` is not a :class:`NotAnalysedReason` (or its value), or
        ``detail`` is not a str of at most 1024 characters.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    reason: NotAnalysedReason | str
    detail: str = ""

    def __post_init__(self) -> None:
        check_uid("sop_class_uid", self.sop_class_uid)
        check_uid("sop_instance_uid", self.sop_instance_uid)
        check_uid("series_instance_uid", self.series_instance_uid)
        if not isinstance(self.reason, (str, NotAnalysedReason)):
            raise TypeError('Argument "reason" must be a NotAnalysedReason or str.')
        try:
            object.__setattr__(self, "reason", NotAnalysedReason(self.reason))
        except ValueError:
            raise ValueError(f'Argument "reason" must be one of {[r.value for r in NotAnalysedReason]}, '
                             f"got {self.reason!r}.") from None
        if not isinstance(self.detail, str):
            raise TypeError(f'Argument "detail" must be a str, got {type(self.detail).__name__}.')
        if len(self.detail) > 1024:
            raise ValueError('Argument "detail" must have at most 1024 characters.')


@dataclass(frozen=True)
class NotAnalysedResult:
    """A study that was not analysed: what the report states.

    Parameters
    ----------
    study_instance_uid : str
    instances : Sequence[NotAnalysedRef]
        At least one instance, each once.
    algorithm_name, algorithm_version : str
        The algorithm that did not run (TID 4019); at most 64 characters each.
    bundle_sha256 : str
        The loaded bundle's SHA-256, or empty when none was loaded.
    description : str
        The detector's description (see :class:`~sonoshot.dicom_io.report.StudyResult`).

    Raises
    ------
    TypeError, ValueError
        If an argument has the wrong type or value.
    """

    study_instance_uid: str
    instances: Sequence[NotAnalysedRef]
    algorithm_name: str
    algorithm_version: str
    bundle_sha256: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        check_uid("study_instance_uid", self.study_instance_uid)
        instances = tuple_of("instances", self.instances, NotAnalysedRef)
        if not instances:
            raise ValueError('Argument "instances" must hold at least one instance.')
        if len({i.sop_instance_uid for i in instances}) != len(instances):
            raise ValueError('Argument "instances" must name each instance once.')
        object.__setattr__(self, "instances", instances)
        check_str("algorithm_name", self.algorithm_name, 64)
        check_str("algorithm_version", self.algorithm_version, 64)
        if self.bundle_sha256:
            check_sha256("bundle_sha256", self.bundle_sha256)
        if not isinstance(self.bundle_sha256, str) or not isinstance(self.description, str):
            raise TypeError('Arguments "bundle_sha256" and "description" must be str.')

    @property
    def reason(self) -> NotAnalysedReason:
        """The study's reason: the one most of its instances share; a tie goes to the reason
        declared first in :class:`NotAnalysedReason`."""
        counts = Counter(i.reason for i in self.instances)
        return max(NotAnalysedReason, key=lambda r: (counts[r], -list(NotAnalysedReason).index(r)))


def not_analysed_sop_instance_uid(result: NotAnalysedResult) -> str:
    """The deterministic SOP Instance UID of the report for ``result`` (PS3.5 B.2, 2.25 form)."""
    pairs = sorted(f"{i.sop_instance_uid}={i.reason.value}" for i in result.instances)  # type: ignore[union-attr]
    return name_uid("not-analysed", result.study_instance_uid, result.bundle_sha256, *pairs)


def not_analysed_series_instance_uid(result: NotAnalysedResult) -> str:
    """The deterministic Series Instance UID of "not analysed" reports for one study."""
    return name_uid("not-analysed-series", result.study_instance_uid)


def _tracking(result: NotAnalysedResult, label: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=name_uid("tracking", not_analysed_sop_instance_uid(result), label),
                                    identifier=label)


def _reason(reason: NotAnalysedReason) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=REASON, value=reason.code)


def _content(result: NotAnalysedResult) -> hd.sr.MeasurementReport:
    parameters = [f"bundle_sha256={result.bundle_sha256}"] if result.bundle_sha256 else []
    parameters += [f"description={result.description}"] if result.description else []
    algorithm_id = algorithm(result.algorithm_name, result.algorithm_version, parameters)
    groups: list[Any] = [hd.sr.MeasurementsAndQualitativeEvaluations(  # TID 1501, the study
        tracking_identifier=_tracking(result, STUDY_GROUP),
        algorithm_id=algorithm_id,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=SUMMARY, value=NO_ALGORITHM_SUCCEEDED),
                                 _reason(result.reason)],
    )]
    for instance in result.instances:  # TID 1501, one per instance
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(result, f"instance {instance.sop_instance_uid}"),
            algorithm_id=algorithm_id,
            qualitative_evaluations=[_reason(instance.reason)],  # type: ignore[arg-type]
            source_images=[hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=instance.sop_class_uid,
                referenced_sop_instance_uid=instance.sop_instance_uid)],
        ))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(result.algorithm_name, result.algorithm_version,
                                                result.bundle_sha256),
        procedure_reported=PROCEDURE, imaging_measurements=groups,
    )
    add_qualitative_evaluations(
        report, [NOT_ANALYSED_STATEMENT] + ([result.description] if result.description else []),
        [(i.sop_instance_uid, i.detail or i.reason.meaning) for i in result.instances])  # type: ignore[union-attr]
    return report


def build_not_analysed_report(originals: Sequence[Dataset], result: NotAnalysedResult,
                              predecessor: PredecessorRef | None = None) -> hd.sr.ComprehensiveSR:
    """Build the validated "not analysed" Comprehensive SR for ``result``, in the original study.

    Parameters
    ----------
    originals : Sequence[pydicom.dataset.Dataset]
        The received instances (pixel data optional); must contain every instance of
        ``result``. Patient and study attributes are taken from the first of them.
    result : NotAnalysedResult
    predecessor : PredecessorRef, optional
        The report this one supersedes.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        With SOP Instance UID :func:`not_analysed_sop_instance_uid`.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an original is of another study, an instance is missing from ``originals`` or
        disagrees with it, or ``predecessor`` is this very report.
    """
    if not isinstance(result, NotAnalysedResult):
        raise TypeError('Argument "result" must be a NotAnalysedResult.')
    by_uid = originals_by_uid(originals, result.study_instance_uid)
    evidence = [header_of(evidence_of(by_uid, i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid))
                for i in result.instances]
    return comprehensive_sr(
        evidence, _content(result), result.study_instance_uid,
        (not_analysed_series_instance_uid(result), SERIES_NUMBER, SERIES_DESCRIPTION),
        not_analysed_sop_instance_uid(result), predecessor, result.algorithm_name,
    )


def read_not_analysed(dataset: Dataset) -> NotAnalysedResult:
    """Read back the :class:`NotAnalysedResult` of a report from :func:`build_not_analysed_report`.

    Raises
    ------
    TypeError
        If ``dataset`` is not a pydicom Dataset.
    ValueError
        If it is not a sonoshot "not analysed" report.
    """
    sr = parse_measurement_report(dataset)
    root = sr.content[0]
    try:
        groups = one(root, codes.DCM.ImagingMeasurements).ContentSequence
        series = {uid: s for _study, s, uid, _cls in sr.get_evidence()}
        details = {uid: detail for uid, detail in (t.TextValue.split(": ", 1) for t in
                                                   children(one(root, QUALITATIVE_EVALUATIONS), NOT_EVALUATED))}
        study, instances = None, []
        for group in groups:
            if one(group, codes.DCM.TrackingIdentifier).TextValue == STUDY_GROUP:
                study = group
                continue
            ref = one(group, codes.DCM.SourceOfMeasurement).ReferencedSOPSequence[0]
            uid = str(ref.ReferencedSOPInstanceUID)
            reason = NotAnalysedReason(str(one(group, REASON).ConceptCodeSequence[0].CodeValue))
            instances.append(NotAnalysedRef(str(ref.ReferencedSOPClassUID), uid, str(series[uid]), reason,
                                            "" if details.get(uid) == reason.meaning else details.get(uid, "")))
        summary = one(study, SUMMARY).ConceptCodeSequence[0]  # type: ignore[arg-type]
        if (summary.CodeValue, summary.CodingSchemeDesignator) != key_of(NO_ALGORITHM_SUCCEEDED):
            raise ValueError("the study group does not say that no algorithm succeeded")
        parameters = dict(p.TextValue.split("=", 1)
                          for p in children(study, codes.DCM.AlgorithmParameters))  # type: ignore[arg-type]
        return NotAnalysedResult(
            study_instance_uid=str(dataset.StudyInstanceUID), instances=tuple(instances),
            algorithm_name=one(study, codes.DCM.AlgorithmName).TextValue,  # type: ignore[arg-type]
            algorithm_version=one(study, codes.DCM.AlgorithmVersion).TextValue,  # type: ignore[arg-type]
            bundle_sha256=parameters.get("bundle_sha256", ""), description=parameters.get("description", ""),
        )
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f'Argument "dataset" is not a sonoshot "not analysed" report: {exc!r}.') from exc
