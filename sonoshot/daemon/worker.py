"""worker.py
=========

The two study stages (see :mod:`sonoshot.daemon.stages`): :class:`DeidStage` routes a claimed
study and de-identifies every instance into working copies; :class:`DetectStage` scores the
working copies and builds the SR, which joins the outbox. They run in the same process (the
embedded default) or on different machines (cluster mode: de-identification on CPU nodes,
detection on GPU nodes); the object store carries the files between them and the database the
claims. A stage that lost its claim (its lease moved on) writes nothing to the database.

The detector only ever sees de-identified working copies; the SR is built from the received
originals so it files under the right patient and study in the PACS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread

from sonoshot.config import Config
from sonoshot.db.lifecycle import StudyState
from sonoshot.daemon.routing import route
from sonoshot.db.store import DeidRecord, InstanceRef, NewResult, Store, StudyRef
from sonoshot.db.validation import record_observations
from sonoshot.dicom_io.deid import DeidPolicy, deidentify_file
from sonoshot.dicom_io.pixels import UndecodableError
from sonoshot.dicom_io.report import (ImageScoreRef, PredecessorRef, QuarantinedRef, StudyResult, VerdictValues,
                                      build_report, report_sop_instance_uid)
from sonoshot.model import Detector, ImageScore
from sonoshot.model.inputs import dataset_frames
from sonoshot.objects import Kind, ObjectStore, report_key, work_prefix
from sonoshot.objects.folder import FolderStore
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


class DeidStage:
    """Routes a claimed study (``processing``) and de-identifies every instance into the work store."""

    name = "deid"

    def __init__(self, config: Config, store: Store, objects: ObjectStore, key: bytes) -> None:
        self.config = config
        self.store = store
        self.objects = objects
        self.key = key
        self.policy = DeidPolicy.from_config(config.deid)
        self.work_root = Path(config.storage.work_dir)
        self.quarantine_root = Path(config.storage.quarantine_dir)
        # The embedded work folder is the work store itself: de-identify straight into it.
        self.in_place = isinstance(objects, FolderStore) and \
            objects.roots[Kind.WORK].resolve() == self.work_root.resolve()

    def run(self, study: StudyRef) -> None:
        try:
            self._run(study)
        except Exception as exc:
            log.exception("study %s failed in de-identification", study.study_instance_uid)
            self.store.move_study(study, StudyState.FAILED, detail=f"{type(exc).__name__} during de-identification")

    def _run(self, study: StudyRef) -> None:
        instances = [i for i in self.store.instances_of(study) if not i.file_missing]
        if not instances:
            self.store.move_study(study, StudyState.FAILED, detail="no instance file is left in the spool")
            return
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
            started = time.perf_counter()
            log.info("study %s: de-identifying %d instance(s) (generation %d, attempt %d)",
                     study.study_instance_uid, len(instances), study.generation, study.lease)
            outcomes = self._deidentify(study, instances, originals)
        if not self.store.finish_deid(study, outcomes, time.perf_counter() - started, rule.name):
            log.info("study %s: de-identification dropped, the claim moved on (reopened or taken over)",
                     study.study_instance_uid)
            self.objects.delete_prefix(Kind.WORK, work_prefix(study.study_instance_uid, study.generation,
                                                              study.lease))
        elif not any(o.ok for o in outcomes):  # quarantined: still observed, for drift
            observe(self.store, study, headers, [], [QuarantinedRef(o.sop_instance_uid, o.reason or "quarantined")
                                                     for o in outcomes])

    def _deidentify(self, study: StudyRef, instances: list[InstanceRef], originals: dict[str, Path]
                    ) -> list[DeidRecord]:
        prefix = work_prefix(study.study_instance_uid, study.generation, study.lease)
        if self.in_place:  # the claim's own folder of the work store
            out_dir = self.work_root / prefix
        else:  # a scratch folder of this claim, uploaded from
            self.work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            out_dir = Path(tempfile.mkdtemp(prefix=f".deid-{study.study_instance_uid}-", dir=self.work_root))
        outcomes = []
        try:
            for instance in instances:
                outcome = deidentify_file(originals[instance.sop_instance_uid], out_dir, self.policy, self.key)
                if outcome.ok and outcome.output is not None:
                    key = prefix + outcome.output.name
                    self.objects.put_file(Kind.WORK, key, outcome.output)
                    outcomes.append(DeidRecord(instance.sop_instance_uid, True, outcome.reason, key))
                else:
                    log.warning("instance %s quarantined: %s", instance.sop_instance_uid, outcome.reason)
                    self._quarantine_report(study, instance, outcome.report)
                    outcomes.append(DeidRecord(instance.sop_instance_uid, False, outcome.reason or "quarantined", None))
        finally:
            if not self.in_place:
                shutil.rmtree(out_dir, ignore_errors=True)
        return outcomes

    def _quarantine_report(self, study: StudyRef, instance: InstanceRef, report: dict) -> None:
        """Leave the de-identifier's PHI-free report where an admin looks for quarantined instances;
        the instance itself stays in the spool (the originals store), untouched."""
        folder = self.quarantine_root / study.study_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        report = {**report, "sop_instance_uid": instance.sop_instance_uid, "spool_path": instance.path,
                  "generation": study.generation}
        (folder / f"{instance.sop_instance_uid}.json").write_text(json.dumps(report, indent=2, default=str))


class DetectStage:
    """Scores a claimed study's working copies (``detecting``), builds the SR and queues it."""

    name = "detect"

    def __init__(self, config: Config, store: Store, objects: ObjectStore, detectors: DetectorSlot,
                 observe_stage: StageTimer | None = None) -> None:
        self.config = config
        self.store = store
        self.objects = objects
        self.detectors = detectors
        self.observe_stage = observe_stage or (lambda _stage, _seconds: None)

    def run(self, study: StudyRef) -> None:
        try:
            self._run(study)
        except Exception as exc:
            log.exception("study %s failed in detection", study.study_instance_uid)
            self.store.move_study(study, StudyState.FAILED, detail=f"{type(exc).__name__} during detection")

    def _run(self, study: StudyRef) -> None:
        detector = self.detectors.get()
        if detector is None:
            self.store.move_study(study, StudyState.AWAITING_DETECTOR, detail="no detector configured")
            return
        instances = self.store.instances_of(study)
        clean = [i for i in instances if i.deid_status == "ok" and i.work_path]
        quarantined = [QuarantinedRef(i.sop_instance_uid, i.deid_reason or "quarantined")
                       for i in instances if i.deid_status == "quarantined"]
        timings: dict[str, float] = {}
        started = time.perf_counter()
        log.info("study %s: scoring %d instance(s) (generation %d, attempt %d)", study.study_instance_uid,
                 len(clean), study.generation, study.lease)
        scored, quarantined = self._detect(detector, clean, quarantined)
        timings["detect"] = time.perf_counter() - started
        headers = {}  # the originals' headers: the SR's patient and study, the devices for drift
        for instance in instances:
            if not instance.file_missing:
                with self.objects.local_file(Kind.ORIGINALS, instance.path) as path:
                    headers[instance.sop_instance_uid] = dcmread(path, stop_before_pixels=True)
        if not scored:
            if self.store.move_study(study, StudyState.QUARANTINED, detail="no instance could be scored"):
                observe(self.store, study, headers, [], quarantined)
            return
        result = self._report(study, detector, scored, quarantined, headers, timings)
        for stage, seconds in timings.items():
            self.observe_stage(stage, seconds)
        if result:
            observe(self.store, study, headers, scored, quarantined)
            log.info("study %s scored %.3f (%s), SR %s", study.study_instance_uid, result.score, result.verdict,
                     result.sr_sop_instance_uid)

    def _detect(self, detector: Detector, clean: list[InstanceRef], quarantined: list[QuarantinedRef]
                ) -> tuple[list[_Scored], list[QuarantinedRef]]:
        scored = []
        for original in clean:
            try:
                with self.objects.local_file(Kind.WORK, original.work_path or "") as path:
                    frames = dataset_frames(dcmread(path), detector.config.frames_per_cine)
                image = detector.score_image(frames)
            except UndecodableError as exc:
                quarantined.append(QuarantinedRef(original.sop_instance_uid, f"not scored: {exc}"))
                continue
            scored.append(_Scored(original, image.frames, image.score, image_stats(frames.frames)))
        return scored, quarantined

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
                and self.objects.exists(Kind.REPORTS, previous.sr_path):  # the same result again supersedes nothing
            with self.objects.local_file(Kind.REPORTS, previous.sr_path) as path:
                predecessor = PredecessorRef.from_dataset(dcmread(path, stop_before_pixels=True))
        sr = build_report([headers[s.original.sop_instance_uid] for s in scored], result, predecessor)
        relative = report_key(study.study_instance_uid, sr.SOPInstanceUID, study.lease)
        self.objects.put(Kind.REPORTS, relative, _encode(sr))
        timings["report"] = time.perf_counter() - started
        new = NewResult(score=score, verdict=verdict.value, threshold=threshold, bundle_sha256=result.bundle_sha256,
                        backbone=result.backbone, images_scored=len(scored), images_quarantined=len(quarantined),
                        sr_sop_instance_uid=sr.SOPInstanceUID, sr_path=relative,
                        predecessor_sr_uid=predecessor.sop_instance_uid if predecessor else None, timings=timings)
        destinations = [d.name for d in self.config.delivery.destinations]
        if self.store.add_result(study, new, destinations) is None:
            log.info("study %s: result dropped, the claim moved on (reopened, or taken over after a stall)",
                     study.study_instance_uid)
            self.objects.delete(Kind.REPORTS, [relative])
            return None
        return new


def observe(store: Store, study: StudyRef, headers: dict[str, Dataset], scored: list[_Scored],
            quarantined: list[QuarantinedRef]) -> None:
    """Device, image statistics and score of each instance, for drift (:mod:`sonoshot.validation`);
    recorded by the claim whose result (or quarantine) the store accepted."""
    record_observations(store, study, observations(
        headers, [(s.original.sop_instance_uid, s.score, s.stats) for s in scored],
        [(q.sop_instance_uid, q.reason) for q in quarantined]))


def _as_image_score(scored: _Scored) -> ImageScore:
    return ImageScore(scored.original.sop_instance_uid, scored.frames, scored.score)


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
