"""worker.py
=========

One study through route → scope → de-identify → detect → report → outbox. Workers claim
``complete`` studies from the database, so any number of them (on any number of machines, on
PostgreSQL) can run; a crash leaves the study ``processing`` and restart recovery requeues it.

The detector only ever sees de-identified working copies; the reports are built from the
received originals so they file under the right patient and study in the PACS
(:mod:`sonoshot.daemon.reporting`). A study with nothing analysed (out of the detector's scope,
quarantined, failed) gets a "not analysed" report instead of silence.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydicom import Dataset, dcmread

from sonoshot.config import Config
from sonoshot.db.lifecycle import StudyState
from sonoshot.daemon.reporting import (Excluded, ScoredInstance, deid_reason, report_not_analysed, report_scored,
                                       split_by_scope)
from sonoshot.daemon.routing import route
from sonoshot.db.store import InstanceRef, Store, StudyRef
from sonoshot.db.validation import record_observations
from sonoshot.dicom_io.deid import DeidOutcome, DeidPolicy, deidentify_file
from sonoshot.dicom_io.not_analysed import NotAnalysedReason
from sonoshot.dicom_io.pixels import UndecodableError
from sonoshot.dicom_io.spool import Spool
from sonoshot.model import Detector
from sonoshot.model.batching import SharedScorer
from sonoshot.model.inputs import InputImage, dataset_frames
from sonoshot.validation.imaging import ImageStats, image_stats
from sonoshot.validation.observe import observations

log = logging.getLogger(__name__)

StageTimer = Callable[[str, float], None]


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
            self._failed(study, f"{type(exc).__name__} during processing")
        return True

    def _failed(self, study: StudyRef, detail: str) -> None:
        """Move the study to ``failed``, with a "not analysed" report about every instance whose
        header can still be read; if even that fails, just move it."""
        try:
            instances = [i for i in self.store.instances_of(study) if not i.file_missing]
            headers = {}
            for instance in instances:
                try:
                    headers[instance.sop_instance_uid] = dcmread(self.spool.path(instance.path),
                                                                 stop_before_pixels=True)
                except Exception:  # an unreadable header is left out of the report
                    continue
            excluded = [Excluded(i, NotAnalysedReason.PROCESSING_FAILED, detail) for i in instances]
            report_not_analysed(self.config, self.store, self.spool, study, self.detectors.get(), excluded, headers,
                                StudyState.FAILED, detail)
        except Exception:
            log.exception("study %s: the not-analysed report failed too", study.study_instance_uid)
            self.store.move_study(study, StudyState.FAILED, detail=detail)

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
        in_scope, excluded = split_by_scope(detector, instances, headers)
        if not in_scope:
            self._not_analysed(study, detector, excluded, headers, StudyState.OUT_OF_SCOPE,
                               f"{len(excluded)} instance(s), none inside the detector's scope")
            return
        timings: dict[str, float] = {}
        started = time.perf_counter()
        clean, quarantined = self._deidentify(study, in_scope)
        timings["deidentify"] = time.perf_counter() - started
        excluded += quarantined
        if not clean:
            self._not_analysed(study, detector, excluded, headers, StudyState.QUARANTINED,
                               f"{len(quarantined)} instance(s), none could be de-identified safely")
            return
        started = time.perf_counter()
        scored, unscored, stats = self._detect(detector, clean)
        timings["detect"] = time.perf_counter() - started
        excluded += unscored
        if not scored:
            self._not_analysed(study, detector, excluded, headers, StudyState.QUARANTINED,
                               "no instance could be scored")
            return
        self._observe(study, headers, scored, stats, excluded)
        result = report_scored(self.config, self.store, self.spool, study, detector, scored, excluded, headers,
                               timings)
        for stage, seconds in timings.items():
            self.observe_stage(stage, seconds)
        if result:
            log.info("study %s scored %.3f (%s), SR %s, key image %s", study.study_instance_uid, result.score,
                     result.verdict, result.sr_sop_instance_uid, result.key_image_sop_instance_uid or "none")

    def _not_analysed(self, study: StudyRef, detector: Detector, excluded: list[Excluded],
                      headers: dict[str, Dataset], to_state: StudyState, detail: str) -> None:
        started = time.perf_counter()
        if to_state is not StudyState.OUT_OF_SCOPE:  # drift counts what a scanner made unusable
            self._observe(study, headers, [], {}, excluded)
        report_not_analysed(self.config, self.store, self.spool, study, detector, excluded, headers, to_state, detail)
        self.observe_stage("report", time.perf_counter() - started)

    def _deidentify(self, study: StudyRef, instances: list[InstanceRef]
                    ) -> tuple[list[tuple[InstanceRef, Path]], list[Excluded]]:
        out_dir = self.work_root / study.study_instance_uid / f"g{study.generation}"
        shutil.rmtree(out_dir, ignore_errors=True)  # a requeued study starts its working copies afresh
        clean, quarantined = [], []
        for instance in instances:
            try:
                outcome = deidentify_file(self.spool.path(instance.path), out_dir, self.policy, self.key)
            except Exception as exc:  # one instance must not fail the study: it is quarantined
                outcome = DeidOutcome.internal_error(exc)
            self.store.record_deid(study, instance.sop_instance_uid, outcome.ok, outcome.reason)
            if outcome.ok and outcome.output is not None:
                clean.append((instance, outcome.output))
            else:
                log.warning("instance %s quarantined: %s", instance.sop_instance_uid, outcome.reason)
                self._quarantine_report(study, instance, outcome.report)
                quarantined.append(Excluded(instance, deid_reason(outcome.reason_code), outcome.reason or "quarantined"))
        return clean, quarantined

    def _observe(self, study: StudyRef, headers: dict[str, Dataset], scored: list[ScoredInstance],
                 stats: dict[str, ImageStats], excluded: list[Excluded]) -> None:
        """Device, image statistics and score of each instance, for drift (:mod:`sonoshot.validation`);
        an instance left out is recorded with its coded reason."""
        record_observations(self.store, study, observations(
            headers, [(s.original.sop_instance_uid, s.image.score, stats[s.original.sop_instance_uid])
                      for s in scored],
            [(e.original.sop_instance_uid, e.reason.value) for e in excluded
             if e.original.sop_instance_uid in headers]))

    def _quarantine_report(self, study: StudyRef, instance: InstanceRef, report: dict) -> None:
        """Leave the de-identifier's PHI-free report where an admin looks for quarantined instances;
        the instance itself stays in the spool, untouched."""
        folder = self.quarantine_root / study.study_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        report = {**report, "sop_instance_uid": instance.sop_instance_uid, "spool_path": instance.path,
                  "generation": study.generation}
        (folder / f"{instance.sop_instance_uid}.json").write_text(json.dumps(report, indent=2, default=str))

    def _detect(self, detector: Detector, clean: list[tuple[InstanceRef, Path]]
                ) -> tuple[list[ScoredInstance], list[Excluded], dict[str, ImageStats]]:
        """Score the clean copies in shared batches (with other workers' studies through the shared
        scorer), decoding each as the batches need it; also the image statistics of the scored
        frames, for drift."""
        decoded: list[tuple[InstanceRef, Path]] = []
        unscored, stats = [], {}

        def images() -> Iterator[InputImage]:
            for original, path in clean:
                try:
                    image = dataset_frames(dcmread(path), detector.config.frames_per_cine)
                except UndecodableError as exc:
                    unscored.append(Excluded(original, NotAnalysedReason.UNDECODABLE, f"not scored: {exc}"))
                    continue
                decoded.append((original, path))
                stats[original.sop_instance_uid] = image_stats(image.frames)
                yield image

        scores = self.scorer.score(detector, images()) if self.scorer else detector.score_images(images())
        return [ScoredInstance(original, path, image) for (original, path), image in zip(decoded, scores)], \
            unscored, stats
