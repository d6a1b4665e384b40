"""models.py
=========

The ORM schema. Alembic (``sonoshot/db/migrations``) owns it on disk; this module mirrors it.
No column holds a patient name, ID or birth date: studies are known by their UIDs and a keyed
patient pseudonym only.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

UID = String(64)
AE_TITLE = String(16)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Association(Base):
    """One DICOM association to our SCP: who sent, when, how much, how it ended."""

    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae_title: Mapped[str] = mapped_column(AE_TITLE)
    called_ae_title: Mapped[str] = mapped_column(AE_TITLE)
    peer_address: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))  # released, aborted, interrupted
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)


class Study(Base):
    """A study as it moves through the pipeline (see :mod:`sonoshot.db.lifecycle`)."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)  # +1 each time a late instance reopens it
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    calling_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    called_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    route_rule: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    receiving_since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # this generation
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)  # last error or hold reason, without PHI

    instances: Mapped[list["Instance"]] = relationship(back_populates="study")
    results: Mapped[list["Result"]] = relationship(back_populates="study", order_by="Result.id")


class Instance(Base):
    """One received SOP instance and the spool file that holds it, exactly as received."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(300))  # relative to the spool folder
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)  # the study generation it arrived in
    file_missing: Mapped[bool] = mapped_column(default=False)
    deid_status: Mapped[str | None] = mapped_column(String(16))  # ok, quarantined
    deid_reason: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="instances")


class Event(Base):
    """Append-only audit trail: what happened, to which UIDs, from whom, with what outcome."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    association_id: Mapped[int | None] = mapped_column(Integer)
    calling_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[dict | None] = mapped_column(JSON)


class Result(Base):
    """One result for one generation of a study, and the documents that carry it: a scored SR
    (and its key image), or a "not analysed" SR (no score; the study's coded reason)."""

    __tablename__ = "results"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), index=True, server_default="scored")  # scored, not-analysed
    reason: Mapped[str | None] = mapped_column(String(16))  # not-analysed: the study's reason code
    score: Mapped[float | None] = mapped_column(Float)  # None when not analysed
    verdict: Mapped[str | None] = mapped_column(String(16))
    threshold: Mapped[float | None] = mapped_column(Float)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    backbone: Mapped[str] = mapped_column(String(64))
    images_scored: Mapped[int] = mapped_column(Integer)
    images_quarantined: Mapped[int] = mapped_column(Integer)
    sr_sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sr_path: Mapped[str] = mapped_column(String(300))  # relative to the spool folder
    predecessor_sr_uid: Mapped[str | None] = mapped_column(UID)
    key_image_sop_instance_uid: Mapped[str | None] = mapped_column(UID)  # sent with the SR, when there is one
    key_image_path: Mapped[str | None] = mapped_column(String(300))  # relative to the spool folder
    timings: Mapped[dict] = mapped_column(JSON)  # seconds per stage

    study: Mapped[Study] = relationship(back_populates="results")
    deliveries: Mapped[list["Delivery"]] = relationship(back_populates="result")


class Delivery(Base):
    """The outbox: one row per result and destination, retried with backoff."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("result_id", "destination"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_status: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    result: Mapped[Result] = relationship(back_populates="deliveries")


class Feedback(Base):
    """Ground truth for one study: a label, who gave it, through which door, from where.

    The latest row of a study is its label. ``finding`` is free text that was screened for the
    study's header PHI strings (and anything date- or ID-like) before it was stored.
    """

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    label: Mapped[str] = mapped_column(String(16))  # normal, abnormal
    finding: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(32))  # e.g. ris, radiologist, pathology
    recorded_by: Mapped[str] = mapped_column(String(64))  # console user or OS user of the CLI
    channel: Mapped[str] = mapped_column(String(16))  # cli, csv, console
    origin: Mapped[str] = mapped_column(String(64))  # host name (CLI) or client address (console)


class Scanner(Base):
    """A device seen in received headers: PHI-free attributes only, first sighting recorded."""

    __tablename__ = "scanners"
    __table_args__ = (UniqueConstraint("manufacturer", "model", "software_versions", "probe"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    software_versions: Mapped[str] = mapped_column(String(64))
    probe: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Observation(Base):
    """What the detector saw of one instance at processing time: device, image statistics, score."""

    __tablename__ = "observations"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    scanner_id: Mapped[int] = mapped_column(ForeignKey("scanners.id"), index=True)
    body_part: Mapped[str] = mapped_column(String(16))  # BodyPartExamined, empty when absent
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    quarantined: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)  # why it was quarantined or not scored
    score: Mapped[float | None] = mapped_column(Float)
    rows: Mapped[int | None] = mapped_column(Integer)  # of the image region the model saw
    columns: Mapped[int | None] = mapped_column(Integer)
    brightness: Mapped[float | None] = mapped_column(Float)  # mean grey level 0-255 of those frames


class User(Base):
    """A web console account: a role and an Argon2id password hash, never the password."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin, auditor, clinician
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
