"""reporting.py
============

From a study's outcome to the documents that go back into it: the stage after detection. The
documents are built from the received originals (patient and study) and, for the key image,
the de-identified frame the detector scored; they are written to the spool's reports folder and
recorded as one result with its outbox rows, all through :class:`~sonoshot.db.store.Store`.

* :func:`report_scored`: at least one instance was scored. The SR (with a TID 1410 region for
  each anomalous area of each flagged frame, up to ``report.max_regions`` per frame) and, when
  ``report.key_image`` is on and the detector made maps, the key image of the most anomalous
  scored frame. The study moves to ``reported``.
* :func:`report_not_analysed`: nothing was scored. The "not analysed" SR with a coded reason per
  instance (``report.not_analysed``); the study moves to ``out-of-scope``, ``quarantined`` or
  ``failed`` either way.

A new result supersedes the study's last one (Predecessor Documents Sequence), whatever kinds
they are; the same result again supersedes nothing and queues nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread

from sonoshot import __version__
from sonoshot.config import Config
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.queries import NOT_ANALYSED
from sonoshot.db.store import InstanceRef, NewResult, Store, StudyRef
from sonoshot.dicom_io.deid import QuarantineReason
from sonoshot.dicom_io.keyimage import (build_key_image, key_image_series_instance_uid, key_image_sop_instance_uid,
                                        render_key_image)
from sonoshot.dicom_io.not_analysed import (NotAnalysedReason, NotAnalysedRef, NotAnalysedResult,
                                            build_not_analysed_report, not_analysed_sop_instance_uid)
from sonoshot.dicom_io.pixels import iter_frames
from sonoshot.dicom_io.regions import anomaly_regions
from sonoshot.dicom_io.report import (ImageScoreRef, PredecessorRef, QuarantinedRef, RegionRef, StudyResult,
                                      VerdictValues, build_report, report_sop_instance_uid)
from sonoshot.dicom_io.spool import Spool
from sonoshot.model import Detector, FrameMap, ImageScore

log = logging.getLogger(__name__)

ALGORITHM_WITHOUT_DETECTOR = "sonoshot"  # names the algorithm in a "not analysed" SR when none is loaded


@dataclass(frozen=True)
class ScoredInstance:
    """An instance the detector scored: the original, its de-identified copy and the score."""

    original: InstanceRef
    clean_path: Path
    image: ImageScore


@dataclass(frozen=True)
class Excluded:
    """An instance left out of the analysis: why (coded) and a PHI-free detail."""

    original: InstanceRef
    reason: NotAnalysedReason
    detail: str


_DEID_REASONS = {
    QuarantineReason.UNREADABLE: NotAnalysedReason.UNREADABLE,
    QuarantineReason.UNSUPPORTED_TRANSFER_SYNTAX: NotAnalysedReason.UNDECODABLE,
    QuarantineReason.UNDECODABLE: NotAnalysedReason.UNDECODABLE,
    QuarantineReason.NO_KEEP_AREA: NotAnalysedReason.PIXELS_NOT_CLEANED,
    QuarantineReason.TEXT_DETECTOR_UNAVAILABLE: NotAnalysedReason.NOT_VERIFIED,
    QuarantineReason.VERIFIER_FAILED: NotAnalysedReason.NOT_VERIFIED,
    QuarantineReason.INTERNAL_ERROR: NotAnalysedReason.PROCESSING_FAILED,
}


def deid_reason(code: QuarantineReason | None) -> NotAnalysedReason:
    """The "not analysed" reason for a de-identifier's quarantine code
    (:attr:`~sonoshot.dicom_io.deid.DeidOutcome.reason_code`); an unknown one counts as unverified."""
    return _DEID_REASONS.get(code, NotAnalysedReason.NOT_VERIFIED) if code else NotAnalysedReason.NOT_VERIFIED


def split_by_scope(detector: Detector, instances: Sequence[InstanceRef], headers: dict[str, Dataset]
                   ) -> tuple[list[InstanceRef], list[Excluded]]:
    """The instances inside the detector's scope, and the others with the reason."""
    inside, outside = [], []
    for instance in instances:
        problem = detector.scope_problem(headers[instance.sop_instance_uid])
        if problem is None:
            inside.append(instance)
        else:
            outside.append(Excluded(instance, NotAnalysedReason.OUTSIDE_SCOPE, problem))
    return inside, outside


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _predecessor(store: Store, spool: Spool, study: StudyRef, new_uid: str) -> PredecessorRef | None:
    """The study's last report when the new one differs from it (the same result again
    supersedes nothing) and its file is still in the spool."""
    previous = store.latest_result(study)
    if previous is None or previous.sr_sop_instance_uid == new_uid or not spool.path(previous.sr_path).is_file():
        return None
    return PredecessorRef.from_dataset(dcmread(spool.path(previous.sr_path), stop_before_pixels=True))


def _is_multiframe(header: Dataset) -> bool:
    return int(header.get("NumberOfFrames", 1) or 1) > 1


def _regions(scored: ScoredInstance, multiframe: bool, threshold: float, max_regions: int
             ) -> dict[int, tuple[RegionRef, ...]]:
    """Regions of each flagged frame (zero-based frame number -> regions)."""
    out: dict[int, tuple[RegionRef, ...]] = {}
    if max_regions < 1:
        return out
    for frame_map in scored.image.maps:
        if frame_map.score < threshold:
            continue
        frame = frame_map.frame + 1 if multiframe else None
        out[frame_map.frame] = tuple(
            RegionRef(frame, frame_map.score, tuple(map(tuple, region.points)))
            for region in anomaly_regions(frame_map.anomaly, frame_map.threshold, max_regions))
    return out


def _caption(result: StudyResult, frame_map: FrameMap, header: Dataset) -> list[str]:
    lines = [f"Study {VerdictValues(result.verdict).value}: anomaly score {result.score:.3f} "
             f"(threshold {result.threshold:.3f})"]
    where = (f", frame {frame_map.frame + 1} of {int(header.NumberOfFrames)}" if _is_multiframe(header) else "")
    lines.append(f"This image{where}: score {frame_map.score:.3f}; outline: anomalous area")
    lines.append(f"{result.algorithm_name} {result.algorithm_version}")
    if result.description:
        lines.append(result.description.encode("ascii", "replace").decode())
    return lines


def _key_image(spool: Spool, result: StudyResult, sr: Dataset, scored: Sequence[ScoredInstance],
               regions: dict[tuple[str, int], tuple[RegionRef, ...]], headers: dict[str, Dataset]
               ) -> tuple[str, str] | None:
    """Write the key image of the most anomalous scored frame; its (SOP Instance UID, path)."""
    candidates = [(m.score, s, m) for s in scored for m in s.image.maps]
    if not candidates:
        return None
    _score, chosen, frame_map = max(candidates, key=lambda c: c[0])
    header = headers[chosen.original.sop_instance_uid]
    (frame,) = iter_frames(dcmread(chosen.clean_path), [frame_map.frame])
    outlines = [r.points for r in regions.get((chosen.original.sop_instance_uid, frame_map.frame), ())]
    pixels = render_key_image(frame, frame_map.anomaly, outlines, _caption(result, frame_map, header))
    uid = key_image_sop_instance_uid(str(sr.SOPInstanceUID))
    image = build_key_image(header, pixels, uid,
                            key_image_series_instance_uid(result.study_instance_uid, result.bundle_sha256),
                            int(sr.InstanceNumber), frame_map.frame + 1 if _is_multiframe(header) else None,
                            result.algorithm_name)
    relative = spool.report_path(result.study_instance_uid, uid)
    spool.put(relative, _encode(image))
    return uid, relative


def report_scored(config: Config, store: Store, spool: Spool, study: StudyRef, detector: Detector,
                  scored: Sequence[ScoredInstance], excluded: Sequence[Excluded], headers: dict[str, Dataset],
                  timings: dict[str, float]) -> NewResult | None:
    """Build, write and record the scored report (and key image) of a claimed study.

    ``timings`` gains ``regions``, ``report`` and ``key-image`` (seconds). Returns the result,
    or None when a late instance reopened the study meanwhile (its next generation redoes it).
    """
    started = time.perf_counter()
    score = detector.study_score([s.image for s in scored])
    threshold = float(detector.threshold)
    verdict = VerdictValues.ABNORMAL if score >= threshold else VerdictValues.NORMAL
    images, regions = [], {}
    for s in scored:
        multiframe = _is_multiframe(headers[s.original.sop_instance_uid])
        by_frame = _regions(s, multiframe, threshold, config.report.max_regions)
        regions.update({(s.original.sop_instance_uid, f): r for f, r in by_frame.items()})
        images.append(ImageScoreRef(s.original.sop_class_uid, s.original.sop_instance_uid,
                                    s.original.series_instance_uid, s.image.score,
                                    tuple(f + 1 for f in s.image.frames) if multiframe else (),
                                    tuple(r for f in sorted(by_frame) for r in by_frame[f])))
    timings["regions"] = time.perf_counter() - started
    started = time.perf_counter()
    result = StudyResult(
        study_instance_uid=study.study_instance_uid, score=score, verdict=verdict, threshold=threshold,
        image_scores=images, quarantined=[QuarantinedRef(e.original.sop_instance_uid, e.detail) for e in excluded],
        bundle_sha256=detector.bundle_sha256 or detector.backbone_sha256, backbone=detector.backbone_name,
        algorithm_name=detector.name, algorithm_version=detector.version, description=detector.description)
    predecessor = _predecessor(store, spool, study, report_sop_instance_uid(result))
    sr = build_report([headers[s.original.sop_instance_uid] for s in scored], result, predecessor)
    relative = spool.report_path(study.study_instance_uid, sr.SOPInstanceUID)
    spool.put(relative, _encode(sr))
    timings["report"] = time.perf_counter() - started
    key_image = None
    if config.report.key_image:
        started = time.perf_counter()
        key_image = _key_image(spool, result, sr, scored, regions, headers)
        timings["key-image"] = time.perf_counter() - started
    new = NewResult(score=score, verdict=verdict.value, threshold=threshold, bundle_sha256=result.bundle_sha256,
                    backbone=result.backbone, images_scored=len(scored), images_quarantined=len(excluded),
                    sr_sop_instance_uid=sr.SOPInstanceUID, sr_path=relative,
                    predecessor_sr_uid=predecessor.sop_instance_uid if predecessor else None, timings=timings,
                    key_image_sop_instance_uid=key_image[0] if key_image else None,
                    key_image_path=key_image[1] if key_image else None)
    destinations = [d.name for d in config.delivery.destinations]
    if store.add_result(study, new, destinations) is None:
        log.info("study %s was reopened while processing; its next generation supersedes this result",
                 study.study_instance_uid)
        return None
    return new


def report_not_analysed(config: Config, store: Store, spool: Spool, study: StudyRef, detector: Detector | None,
                        excluded: Sequence[Excluded], headers: dict[str, Dataset], to_state: StudyState,
                        detail: str) -> NewResult | None:
    """Move a claimed study that was not analysed to ``to_state`` and, when
    ``report.not_analysed`` is on, send the "not analysed" SR about the instances whose header
    could be read (``headers``).

    Returns the result, or None when no report was made (switched off, no readable instance,
    or a late instance reopened the study meanwhile).
    """
    instances = [NotAnalysedRef(e.original.sop_class_uid, e.original.sop_instance_uid,
                                e.original.series_instance_uid, e.reason, e.detail[:1024])
                 for e in excluded if e.original.sop_instance_uid in headers]
    if not (config.report.not_analysed and instances):
        store.move_study(study, to_state, detail=detail)
        return None
    started = time.perf_counter()
    result = NotAnalysedResult(
        study_instance_uid=study.study_instance_uid, instances=instances,
        algorithm_name=detector.name if detector else ALGORITHM_WITHOUT_DETECTOR,
        algorithm_version=detector.version if detector else __version__,
        bundle_sha256=detector.bundle_sha256 if detector else "",
        description=detector.description if detector else "")
    predecessor = _predecessor(store, spool, study, not_analysed_sop_instance_uid(result))
    sr = build_not_analysed_report([headers[i.sop_instance_uid] for i in instances], result, predecessor)
    relative = spool.report_path(study.study_instance_uid, sr.SOPInstanceUID)
    spool.put(relative, _encode(sr))
    new = NewResult(score=None, verdict=None, threshold=None, bundle_sha256=result.bundle_sha256,
                    backbone=detector.backbone_name if detector else "", images_scored=0,
                    images_quarantined=len(instances), sr_sop_instance_uid=sr.SOPInstanceUID, sr_path=relative,
                    predecessor_sr_uid=predecessor.sop_instance_uid if predecessor else None,
                    timings={"report": time.perf_counter() - started}, kind=NOT_ANALYSED,
                    reason=result.reason.value)
    if store.add_result(study, new, [d.name for d in config.delivery.destinations], to_state, detail) is None:
        log.info("study %s was reopened while processing; its next generation supersedes this result",
                 study.study_instance_uid)
        return None
    log.info("study %s not analysed (%s): SR %s", study.study_instance_uid, result.reason.value, sr.SOPInstanceUID)
    return new
