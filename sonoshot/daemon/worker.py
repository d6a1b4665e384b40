"""worker.py
=========

One study through route → de-identify → detect → report → outbox. Workers claim ``complete``
studies from the database, so any number of them (on any number of machines, on PostgreSQL)
can run; a crash leaves the study ``processing`` and restart recovery requeues it.

The detector only ever sees de-identified working copies; the SR is built from the received
originals so it files under the right patient and study in the PACS.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread

from sonoshot.config import Config
from sonoshot.db.lifecycle import StudyState
from sonoshot.daemon.routing import route
from sonoshot.db.store import InstanceRef, NewResult, Store, StudyRef
from sonoshot.db.validation import record_observations
from sonoshot.dicom_io.deid import DeidPolicy, deidentify_file
from sonoshot.dicom_io.pixels import UndecodableError
from sonoshot.dicom_io.report import (ImageScoreRef, PredecessorRef, QuarantinedRef, StudyResult, VerdictValues,
                                      build_report, report_sop_instance_uid)
from sonoshot.dicom_io.spool import Spool
from sonoshot.model import Detector, ImageScore
from sonoshot.model.batching import SharedScorer
from sonoshot.model.inputs import InputImage, dataset_frames
from sonoshot.validation.imaging import image_stats
from sonoshot.validation.observe import observations

log = logging.getLogger(__name__)

StageTimer = Callable[[str, float], None]


@dataclass(frozen=True)
class _Scored:
    original: InstanceRef
    frames: tuple[int, ...]
    score: float
    stats: tuple[int, int, float]  # rows, columns, brightness of the scored frames (drift)


class DetectorSlot:
    """The current detector, swapped atomically on reload (SIGHUP)."""

    def __init__(self, detector: Detector | None = None) -> None:
        self._detector = detector
        self._lock = threading.Lock()

    def get(self) -> Detector | None:
        with self._lock:
            return self._detector

    def set(self, detector: Detector | None) -> None:
        with self._lock:
            self._detector = detector


class StudyWorker:
    """Processes claimed studies; ``run`` loops until ``stop`` is set."""

    def __init__(self, config: Config, store: Store, spool: Spool, key: bytes, detectors: DetectorSlot,
                 observe_stage: StageTimer | None = None, scorer: SharedScorer | None = None) -> None:
        self.config = config
        self.store = store
        self.spool = spool
        self.key = key
        self.policy = DeidPolicy.from_config(config.deid)
        self.detectors = detectors
        self.observe_stage = observe_stage or (lambda _stage, _seconds: None)
        self.work_root = Path(config.storage.work_dir)
        self.quarantine_root = Path(config.storage.quarantine_dir)
        self.scorer = scorer  # shared by the workers, so their studies share the backbone's batches

    def run(self, stop: threading.Event, idle_s: float = 0.25) -> None:
        """Claim and process studies until ``stop`` is set (the study in hand is finished first)."""
        while not stop.is_set():
            try:
                busy = self.process_next()
            except Exception:  # a bug must not kill the worker thread; the study is marked failed
                log.exception("worker error")
                busy = False
            if not busy:
                stop.wait(idle_s)

    def process_next(self) -> bool:
        """Process one ``complete`` study if there is one; returns whether one was claimed."""
        study = self.store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
        if study is None:
            return False
        try:
            self.process(study)
        except Exception as exc:
            log.exception("study %s failed", study.study_instance_uid)
            self.store.move_study(study, StudyState.FAILED, detail=f"{type(exc).__name__} during processing")
        return True

    def process(self, study: StudyRef) -> None:
        """Route, de-identify, detect, report and queue one claimed study."""
        instances = [i for i in self.store.instances_of(study) if not i.file_missing]
        if not instances:
            self.store.move_study(study, StudyState.FAILED, detail="no instance file is left in the spool")
            return
        headers = {i.sop_instance_uid: dcmread(self.spool.path(i.path), stop_before_pixels=True) for i in instances}
        rule = route(next(iter(headers.values())), study.calling_ae_title, study.called_ae_title,
                     self.config.routing.rules)
        if rule.action == "ignore":
            self.store.move_study(study, StudyState.IGNORED, detail=f"routing rule '{rule.name}'", route_rule=rule.name)
            return
        detector = self.detectors.get()
        if detector is None:
            self.store.move_study(study, StudyState.AWAITING_DETECTOR, detail="no detector configured",
                                  route_rule=rule.name)
            return
        timings: dict[str, float] = {}
        started = time.perf_counter()
        clean, quarantined = self._deidentify(study, instances)
        timings["deidentify"] = time.perf_counter() - started
        if not clean:
            self._observe(study, headers, [], quarantined)
            self.store.move_study(study, StudyState.QUARANTINED,
                                  detail=f"{len(quarantined)} instance(s), none could be de-identified safely")
            return
        started = time.perf_counter()
        scored, quarantined = self._detect(detector, clean, quarantined)
        timings["detect"] = time.perf_counter() - started
        self._observe(study, headers, scored, quarantined)
        if not scored:
            self.store.move_study(study, StudyState.QUARANTINED, detail="no instance could be scored")
            return
        result = self._report(study, detector, scored, quarantined, headers, timings)
        for stage, seconds in timings.items():
            self.observe_stage(stage, seconds)
        if result:
            log.info("study %s scored %.3f (%s), SR %s", study.study_instance_uid, result.score, result.verdict,
                     result.sr_sop_instance_uid)

    def _deidentify(self, study: StudyRef, instances: list[InstanceRef]
                    ) -> tuple[list[tuple[InstanceRef, Path]], list[QuarantinedRef]]:
        out_dir = self.work_root / study.study_instance_uid / f"g{study.generation}"
        shutil.rmtree(out_dir, ignore_errors=True)  # a requeued study starts its working copies afresh
        clean, quarantined = [], []
        for instance in instances:
            outcome = deidentify_file(self.spool.path(instance.path), out_dir, self.policy, self.key)
            self.store.record_deid(study, instance.sop_instance_uid, outcome.ok, outcome.reason)
            if outcome.ok and outcome.output is not None:
                clean.append((instance, outcome.output))
            else:
                log.warning("instance %s quarantined: %s", instance.sop_instance_uid, outcome.reason)
                self._quarantine_report(study, instance, outcome.report)
                quarantined.append(QuarantinedRef(instance.sop_instance_uid, outcome.reason or "quarantined"))
        return clean, quarantined

    def _observe(self, study: StudyRef, headers: dict[str, Dataset], scored: list[_Scored],
                 quarantined: list[QuarantinedRef]) -> None:
        """Device, image statistics and score of each instance, for drift (:mod:`sonoshot.validation`)."""
        record_observations(self.store, study, observations(
            headers, [(s.original.sop_instance_uid, s.score, s.stats) for s in scored],
            [(q.sop_instance_uid, q.reason) for q in quarantined]))

    def _quarantine_report(self, study: StudyRef, instance: InstanceRef, report: dict) -> None:
        """Leave the de-identifier's PHI-free report where an admin looks for quarantined instances;
        the instance itself stays in the spool, untouched."""
        folder = self.quarantine_root / study.study_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        report = {**report, "sop_instance_uid": instance.sop_instance_uid, "spool_path": instance.path,
                  "generation": study.generation}
        (folder / f"{instance.sop_instance_uid}.json").write_text(json.dumps(report, indent=2, default=str))

    def _detect(self, detector: Detector, clean: list[tuple[InstanceRef, Path]], quarantined: list[QuarantinedRef]
                ) -> tuple[list[_Scored], list[QuarantinedRef]]:
        """Score the study's instances in shared batches (with other workers' studies through the
        shared scorer), decoding each as the batches need it."""
        decoded: list[tuple[InstanceRef, tuple[int, int, float]]] = []

        def images() -> Iterator[InputImage]:
            for original, path in clean:
                try:
                    image = dataset_frames(dcmread(path), detector.config.frames_per_cine)
                except UndecodableError as exc:
                    quarantined.append(QuarantinedRef(original.sop_instance_uid, f"not scored: {exc}"))
                    continue
                decoded.append((original, image_stats(image.frames)))
                yield image

        scores = self.scorer.score(detector, images()) if self.scorer else detector.score_images(images())
        return [_Scored(original, s.frames, s.score, stats) for (original, stats), s in zip(decoded, scores)], \
            quarantined

    def _report(self, study: StudyRef, detector: Detector, scored: list[_Scored], quarantined: list[QuarantinedRef],
                headers: dict[str, Dataset], timings: dict[str, float]) -> NewResult | None:
        started = time.perf_counter()
        score = detector.study_score([_as_image_score(s) for s in scored])
        threshold = float(detector.threshold)
        verdict = VerdictValues.ABNORMAL if score >= threshold else VerdictValues.NORMAL
        multi = {uid for uid, h in headers.items() if int(h.get("NumberOfFrames", 1) or 1) > 1}
        result = StudyResult(
            study_instance_uid=study.study_instance_uid, score=score, verdict=verdict, threshold=threshold,
            image_scores=[ImageScoreRef(s.original.sop_class_uid, s.original.sop_instance_uid,
                                        s.original.series_instance_uid, s.score,
                                        tuple(f + 1 for f in s.frames) if s.original.sop_instance_uid in multi else ())
                          for s in scored],
            quarantined=quarantined, bundle_sha256=detector.bundle_sha256 or detector.backbone_sha256,
            backbone=detector.backbone_name, algorithm_name=detector.name, algorithm_version=detector.version)
        previous = self.store.latest_result(study)
        predecessor = None
        if previous is not None and previous.sr_sop_instance_uid != report_sop_instance_uid(result) \
                and self.spool.path(previous.sr_path).is_file():  # the same result again supersedes nothing
            predecessor = PredecessorRef.from_dataset(dcmread(self.spool.path(previous.sr_path),
                                                              stop_before_pixels=True))
        sr = build_report([headers[s.original.sop_instance_uid] for s in scored], result, predecessor)
        relative = self.spool.report_path(study.study_instance_uid, sr.SOPInstanceUID)
        buffer = _encode(sr)
        self.spool.put(relative, buffer)
        timings["report"] = time.perf_counter() - started
        new = NewResult(score=score, verdict=verdict.value, threshold=threshold, bundle_sha256=result.bundle_sha256,
                        backbone=result.backbone, images_scored=len(scored), images_quarantined=len(quarantined),
                        sr_sop_instance_uid=sr.SOPInstanceUID, sr_path=relative,
                        predecessor_sr_uid=predecessor.sop_instance_uid if predecessor else None, timings=timings)
        destinations = [d.name for d in self.config.delivery.destinations]
        if self.store.add_result(study, new, destinations) is None:
            log.info("study %s was reopened while processing; its next generation supersedes this result",
                     study.study_instance_uid)
            return None
        return new


def _as_image_score(scored: _Scored) -> ImageScore:
    return ImageScore(scored.original.sop_instance_uid, scored.frames, scored.score)


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
