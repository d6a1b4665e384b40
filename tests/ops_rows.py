"""Real database rows for the operations tests: studies driven through the lifecycle by Store's
own methods; results and outbox rows (which have no Store method yet) through the ORM."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sonoshot.db.lifecycle import OutboxState, StudyState
from sonoshot.db.models import Delivery, Result, utcnow
from sonoshot.db.store import NewInstance, Store

BUNDLE = "ab" * 32
PREFIX = "1.2.826.0.1.3680043.10.1234"


def new_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'sonoshot.db'}")
    store.migrate()
    return store


def study_uid(n: int) -> str:
    return f"{PREFIX}.{n}"


def receive(store: Store, uid: str, count: int = 2, spool: Path | None = None,
            pseudonym: str = "PSEUDO-1") -> list[str]:
    """Index ``count`` instances of study ``uid`` (and write their files when ``spool`` is given)."""
    paths = []
    for i in range(count):
        sop = f"{uid}.1.{i + 1}"
        relative = f"{uid}/{uid}.1/{sop}.dcm"
        if spool is not None:
            (spool / relative).parent.mkdir(parents=True, exist_ok=True)
            (spool / relative).write_bytes(b"\0" * 128 + b"DICM")
        store.record_instance(NewInstance(
            sop_instance_uid=sop, study_instance_uid=uid, series_instance_uid=f"{uid}.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="US", path=relative, size_bytes=132, calling_ae_title="MODALITY",
            called_ae_title="SONOSHOT", patient_pseudonym=pseudonym))
        paths.append(relative)
    return paths


def add_result(store: Store, uid: str, score: float, verdict: str, sr_path: str | None = None) -> int:
    ref = store.study(uid)
    assert ref is not None
    with store.session() as s:
        row = Result(study_id=ref.id, generation=ref.generation, score=score, verdict=verdict, threshold=0.5,
                     bundle_sha256=BUNDLE, backbone="efficientnet-lite0", images_scored=ref.instance_count,
                     images_quarantined=0, sr_sop_instance_uid=f"{uid}.99.{ref.generation}",
                     sr_path=sr_path or f"{uid}/{uid}.99/{uid}.99.{ref.generation}.dcm", timings={"detect": 0.5})
        s.add(row)
        s.flush()
        return row.id


def add_delivery(store: Store, result_id: int, destination: str, state: OutboxState,
                 delivered_at: datetime | None = None) -> None:
    with store.session() as s:
        s.add(Delivery(result_id=result_id, destination=destination, state=state.value,
                       attempts=1, delivered_at=delivered_at))


def drive(store: Store, uid: str, target: StudyState, score: float = 0.8, verdict: str = "abnormal") -> None:
    """Move a freshly received study (the only one receiving) along legal moves to ``target``."""
    S = StudyState
    if target is S.RECEIVING:
        return
    done = store.complete_quiet_studies(-1, -1)  # quiet as of one second ago: complete now
    assert [d.study_instance_uid for d in done] == [uid]
    if target is S.COMPLETE:
        return
    ref = store.claim_study(S.COMPLETE, S.PROCESSING)
    assert ref is not None and ref.study_instance_uid == uid
    if target is S.PROCESSING:
        return
    store.record_event("deid", "ok", study_instance_uid=uid)
    if target in (S.IGNORED, S.QUARANTINED, S.FAILED, S.AWAITING_DETECTOR, S.OUT_OF_SCOPE):
        assert store.move_study(ref, target, detail="test")
        return
    assert store.move_study(ref, S.REPORTED)
    result_id = add_result(store, uid, score, verdict)
    if target is S.REPORTED:
        add_delivery(store, result_id, "pacs", OutboxState.PENDING)
        return
    delivered = target is S.DELIVERED
    add_delivery(store, result_id, "pacs", OutboxState.DELIVERED if delivered else OutboxState.DEAD_LETTER,
                 utcnow() if delivered else None)
    reported = store.study(uid)
    assert reported is not None and store.move_study(reported, target)
