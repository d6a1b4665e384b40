"""worker.py
=========

The two study stages (see :mod:`sonoshot.daemon.stages`): :class:`DeidStage` routes a claimed
study, checks each instance against the detector's scope and de-identifies those inside it into
working copies; :class:`DetectStage` scores the working copies and builds the reports
(:mod:`sonoshot.daemon.reporting`), which join the outbox. They run in the same process (the
embedded default) or on different machines (cluster mode: de-identification on CPU nodes,
detection on GPU nodes); the object store carries the files between them and the database the
claims. A stage that lost its claim (its lease moved on) writes nothing to the database.

The detector only ever sees de-identified working copies; the reports are built from the
received originals so they file under the right patient and study in the PACS. A study with
nothing analysed (out of the detector's scope, quarantined, failed) gets a "not analysed" report
instead of silence.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydicom import Dataset, dcmread

from sonoshot.config import Config
from sonoshot.daemon.ahead import DeidAhead, Deidentifier
from sonoshot.daemon.reporting import (Excluded, ScoredInstance, deid_reason, report_not_analysed, report_scored,
                                       split_by_scope)
from sonoshot.daemon.routing import route
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.store import DeidRecord, InstanceRef, Store, StudyRef
from sonoshot.db.validation import record_observations
from sonoshot.dicom_io.deid import DeidOutcome, DeidPolicy, deidentify_file
from sonoshot.dicom_io.not_analysed import NotAnalysedReason
from sonoshot.dicom_io.pixels import UndecodableError
from sonoshot.model import Detector
from sonoshot.model.batching import SharedScorer
from sonoshot.model.inputs import InputImage, dataset_frames
from sonoshot.objects import Kind, ObjectStore, work_prefix
from sonoshot.objects.folder import FolderStore
from sonoshot.validation.imaging import ImageStats, image_stats
from sonoshot.validation.observe import observations

log = logging.getLogger(__name__)

StageTimer = Callable[[str, float], None]
QUARANTINED, OUT_OF_SCOPE = "quarantined", "out-of-scope"  # instances.deid_status of those left out


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


def observe(store: Store, study: StudyRef, headers: dict[str, Dataset], scored: list[ScoredInstance],
            stats: dict[str, ImageStats], excluded: list[Excluded]) -> None:
    """Device, image statistics and score of each instance, for drift (:mod:`sonoshot.validation`);
    an instance left out is recorded with its coded reason."""
    record_observations(store, study, observations(
        headers, [(s.original.sop_instance_uid, s.image.score, stats[s.original.sop_instance_uid]) for s in scored],
        [(e.original.sop_instance_uid, e.reason.value) for e in excluded if e.original.sop_instance_uid in headers]))


def fail(config: Config, store: Store, objects: ObjectStore, study: StudyRef, detector: Detector | None,
         detail: str) -> None:
    """Move a claimed study to ``failed``, with a "not analysed" report about every instance whose
    header can still be read; if even that fails, just move it."""
    try:
        instances = [i for i in store.instances_of(study) if not i.file_missing]
        headers = {}
        for instance in instances:
            try:
                with objects.local_file(Kind.ORIGINALS, instance.path) as path:
                    headers[instance.sop_instance_uid] = dcmread(path, stop_before_pixels=True)
            except Exception:  # an unreadable header is left out of the report
                continue
        excluded = [Excluded(i, NotAnalysedReason.PROCESSING_FAILED, detail) for i in instances]
        report_not_analysed(config, store, objects, study, detector, excluded, headers, StudyState.FAILED, detail)
    except Exception:
        log.exception("study %s: the not-analysed report failed too", study.study_instance_uid)
        store.move_study(study, StudyState.FAILED, detail=detail)


class DeidStage:
    """Routes a claimed study (``processing``), leaves out what lies outside the detector's scope
    and de-identifies the rest into the work store (each instance through ``deidentify``)."""

    name = "deid"

    def __init__(self, config: Config, store: Store, objects: ObjectStore, key: bytes,
                 detectors: DetectorSlot, deidentify: Deidentifier = deidentify_file) -> None:
        self.config = config
        self.deidentify = deidentify
        self.store = store
        self.objects = objects
        self.key = key
        self.detectors = detectors  # for its scope; without one, every instance is de-identified
        self.work_root = Path(config.storage.work_dir)
        self.quarantine_root = Path(config.storage.quarantine_dir)
        # The embedded work folder is the work store itself: de-identify straight into it.
        self.in_place = isinstance(objects, FolderStore) and \
            objects.roots[Kind.WORK].resolve() == self.work_root.resolve()
        self.ahead: DeidAhead | None = None  # in one process with the receiver: see sonoshot.daemon.ahead

    def policy(self) -> DeidPolicy:
        """The de-identification policy of the configuration now."""
        return DeidPolicy.from_config(self.config.deid)

    def plan_ahead(self, relative: str, header: Dataset) -> DeidPolicy | None:
        """The policy to de-identify a received instance with ahead of its study's completion, or None
        when the stage would not de-identify it: its study is not receiving, routes to ignore, or
        the instance lies outside the detector's scope."""
        study = self.store.study(relative.split("/", 1)[0])
        if study is None or study.state is not StudyState.RECEIVING:
            return None
        if route(header, study.calling_ae_title, study.called_ae_title, self.config.routing.rules).action == "ignore":
            return None
        detector = self.detectors.get()
        if detector is not None and detector.scope_problem(header) is not None:
            return None
        return self.policy()

    def run(self, study: StudyRef) -> None:
        try:
            self._run(study)
        except Exception as exc:
            log.exception("study %s failed in de-identification", study.study_instance_uid)
            fail(self.config, self.store, self.objects, study, self.detectors.get(),
                 f"{type(exc).__name__} during processing (de-identification)")

    def _run(self, study: StudyRef) -> None:
        instances = [i for i in self.store.instances_of(study) if not i.file_missing]
        if not instances:
            self.store.move_study(study, StudyState.FAILED, detail="no instance file is left in the spool")
            return
        detector = self.detectors.get()
        with contextlib.ExitStack() as stack:
            originals = {i.sop_instance_uid: stack.enter_context(self.objects.local_file(Kind.ORIGINALS, i.path))
                         for i in instances}
            headers = {uid: dcmread(path, stop_before_pixels=True) for uid, path in originals.items()}
            rule = route(headers[instances[0].sop_instance_uid], study.calling_ae_title, study.called_ae_title,
                         self.config.routing.rules)
            if rule.action == "ignore":
                self.store.move_study(study, StudyState.IGNORED, detail=f"routing rule '{rule.name}'",
                                      route_rule=rule.name)
                return
            in_scope, excluded = split_by_scope(detector, instances, headers) if detector else (instances, [])
            if not in_scope:
                report_not_analysed(self.config, self.store, self.objects, study, detector, excluded, headers,
                                    StudyState.OUT_OF_SCOPE,
                                    f"{len(excluded)} instance(s), none inside the detector's scope")
                return
            started = time.perf_counter()
            log.info("study %s: de-identifying %d instance(s) (generation %d, attempt %d)",
                     study.study_instance_uid, len(in_scope), study.generation, study.lease)
            records, quarantined, ahead = self._deidentify(study, in_scope, originals)
        seconds = time.perf_counter() - started
        if ahead:
            log.info("study %s: %d of %d instance(s) were de-identified ahead, during the quiet period (%.2f s "
                     "then, %.2f s now)", study.study_instance_uid, len(ahead), len(in_scope), sum(ahead), seconds)
        records += [DeidRecord(e.original.sop_instance_uid, OUT_OF_SCOPE, reason=e.detail, code=e.reason.value)
                    for e in excluded]
        excluded += quarantined
        if not any(r.ok for r in records):
            if self.store.record_deid(study, records, seconds, rule.name, ahead_seconds=sum(ahead)):
                observe(self.store, study, headers, [], {}, excluded)
                report_not_analysed(self.config, self.store, self.objects, study, detector, excluded, headers,
                                    StudyState.QUARANTINED,
                                    f"{len(quarantined)} instance(s), none could be de-identified safely")
            return
        if not self.store.finish_deid(study, records, seconds, rule.name, ahead_seconds=sum(ahead)):
            log.info("study %s: de-identification dropped, the claim moved on (reopened or taken over)",
                     study.study_instance_uid)
            self.objects.delete_prefix(Kind.WORK, work_prefix(study.study_instance_uid, study.generation,
                                                              study.lease))

    def _deidentify(self, study: StudyRef, instances: list[InstanceRef], originals: dict[str, Path]
                    ) -> tuple[list[DeidRecord], list[Excluded], list[float]]:
        """De-identify ``instances`` into the claim's work prefix; the records, the quarantined and
        the seconds each outcome taken from :attr:`ahead` took there."""
        prefix = work_prefix(study.study_instance_uid, study.generation, study.lease)
        if self.in_place:  # the claim's own folder of the work store
            out_dir = self.work_root / prefix
        else:  # a scratch folder of this claim, uploaded from
            self.work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            out_dir = Path(tempfile.mkdtemp(prefix=f".deid-{study.study_instance_uid}-", dir=self.work_root))
        policy = self.policy()
        records, quarantined = [], []
        ahead: list[float] = []
        try:
            for instance in instances:
                source = originals[instance.sop_instance_uid]
                taken = self.ahead.take(instance.path, source, policy, self.key, out_dir) if self.ahead else None
                if taken is not None:
                    ahead.append(taken.seconds)
                try:
                    outcome = taken.outcome if taken else self.deidentify(source, out_dir, policy, self.key)
                except Exception as exc:  # one instance must not fail the study: it is quarantined
                    outcome = DeidOutcome.internal_error(exc)
                if outcome.ok and outcome.output is not None:
                    key = prefix + outcome.output.name
                    self.objects.put_file(Kind.WORK, key, outcome.output)
                    records.append(DeidRecord(instance.sop_instance_uid, "ok", work_path=key))
                    continue
                log.warning("instance %s quarantined: %s", instance.sop_instance_uid, outcome.reason)
                self._quarantine_report(study, instance, outcome.report)
                left_out = Excluded(instance, deid_reason(outcome.reason_code), outcome.reason or "quarantined")
                quarantined.append(left_out)
                records.append(DeidRecord(instance.sop_instance_uid, QUARANTINED, reason=left_out.detail,
                                          code=left_out.reason.value))
        finally:
            if not self.in_place:
                shutil.rmtree(out_dir, ignore_errors=True)
        return records, quarantined, ahead

    def _quarantine_report(self, study: StudyRef, instance: InstanceRef, report: dict) -> None:
        """Leave the de-identifier's PHI-free report where an admin looks for quarantined instances;
        the instance itself stays in the spool (the originals store), untouched."""
        folder = self.quarantine_root / study.study_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        report = {**report, "sop_instance_uid": instance.sop_instance_uid, "spool_path": instance.path,
                  "generation": study.generation}
        (folder / f"{instance.sop_instance_uid}.json").write_text(json.dumps(report, indent=2, default=str))


class DetectStage:
    """Scores a claimed study's working copies (``detecting``), builds its reports and queues them."""

    name = "detect"

    def __init__(self, config: Config, store: Store, objects: ObjectStore, detectors: DetectorSlot,
                 observe_stage: StageTimer | None = None, scorer: SharedScorer | None = None) -> None:
        self.config = config
        self.store = store
        self.objects = objects
        self.detectors = detectors
        self.observe_stage = observe_stage or (lambda _stage, _seconds: None)
        self.scorer = scorer  # shared by the workers, so their studies share the backbone's batches

    def run(self, study: StudyRef) -> None:
        try:
            self._run(study)
        except Exception as exc:
            log.exception("study %s failed in detection", study.study_instance_uid)
            fail(self.config, self.store, self.objects, study, self.detectors.get(),
                 f"{type(exc).__name__} during processing (detection)")

    def _run(self, study: StudyRef) -> None:
        detector = self.detectors.get()
        if detector is None:
            self.store.move_study(study, StudyState.AWAITING_DETECTOR, detail="no detector configured")
            return
        instances = self.store.instances_of(study)
        headers = {}  # the originals': the reports' patient and study, the devices for drift
        for instance in instances:
            if not instance.file_missing:
                with self.objects.local_file(Kind.ORIGINALS, instance.path) as path:
                    headers[instance.sop_instance_uid] = dcmread(path, stop_before_pixels=True)
        excluded = [Excluded(i, NotAnalysedReason(i.not_analysed_reason or NotAnalysedReason.NOT_VERIFIED.value),
                             i.deid_reason or i.deid_status or "") for i in instances
                    if i.deid_status in (QUARANTINED, OUT_OF_SCOPE)]
        clean = [i for i in instances if i.deid_status == "ok" and i.work_path and i.sop_instance_uid in headers]
        in_scope, outside = split_by_scope(detector, clean, headers)  # the detector may have changed since
        excluded += outside
        if not in_scope:
            report_not_analysed(self.config, self.store, self.objects, study, detector, excluded, headers,
                                StudyState.OUT_OF_SCOPE, f"{len(excluded)} instance(s), none inside the detector's scope")
            return
        timings: dict[str, float] = {}
        with contextlib.ExitStack() as stack:  # the working copies stay at hand for the key image
            copies = {i.sop_instance_uid: stack.enter_context(self.objects.local_file(Kind.WORK, i.work_path or ""))
                      for i in in_scope}
            started = time.perf_counter()
            log.info("study %s: scoring %d instance(s) (generation %d, attempt %d)", study.study_instance_uid,
                     len(in_scope), study.generation, study.lease)
            scored, unscored, stats = self._detect(detector, in_scope, copies)
            timings["detect"] = time.perf_counter() - started
            excluded += unscored
            if not scored:
                observe(self.store, study, headers, [], {}, excluded)
                report_not_analysed(self.config, self.store, self.objects, study, detector, excluded, headers,
                                    StudyState.QUARANTINED, "no instance could be scored")
                return
            observe(self.store, study, headers, scored, stats, excluded)
            result = report_scored(self.config, self.store, self.objects, study, detector, scored, excluded,
                                   headers, timings)
        for stage, seconds in timings.items():
            self.observe_stage(stage, seconds)
        if result:
            log.info("study %s scored %.3f (%s), SR %s, key image %s", study.study_instance_uid, result.score,
                     result.verdict, result.sr_sop_instance_uid, result.key_image_sop_instance_uid or "none")

    def _detect(self, detector: Detector, clean: list[InstanceRef], copies: dict[str, Path]
                ) -> tuple[list[ScoredInstance], list[Excluded], dict[str, ImageStats]]:
        """Score the clean copies in shared batches (with other workers' studies through the shared
        scorer), decoding each as the batches need it; also the image statistics of the scored
        frames, for drift."""
        decoded: list[tuple[InstanceRef, Path]] = []
        unscored, stats = [], {}

        def images() -> Iterator[InputImage]:
            for original in clean:
                path = copies[original.sop_instance_uid]
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
