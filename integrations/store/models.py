"""SQLAlchemy models for everything Veritrace keeps outside the audit ledger.

Studies and instances are the DICOM index; analyses are versioned per study content (one per distinct
content digest, so a late instance makes a new version instead of being lost); reports, cards and feedback
are what the CDS side reads and writes. The audit ledger owns its own tables (package `audit`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # receiving -> stable (queued) ; a later instance sets it back to receiving.
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    # Added by 0005: W3C traceparent of the STOW-RS request that last stored into it, so the analysis that
    # the dicom process queues later joins that request's trace (integrations.trace_parent).
    traceparent: Mapped[str | None] = mapped_column(String(55))

    instances: Mapped[list[Instance]] = relationship(back_populates="study")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "sha256", name="uq_instance_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    # Relative to the spool root; never derived from raw UIDs.
    spool_path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    # Same SOP Instance UID received before with different bytes: both kept, flagged.
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Added by 0002: routing rules select on body part as well as modality and SOP class.
    body_part: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="instances")


class Analysis(Base):
    __tablename__ = "analyses"
    __table_args__ = (UniqueConstraint("study_id", "content_digest", name="uq_analysis_content"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    content_digest: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    # queued -> running -> completed | failed
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    model_identity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    study: Mapped[Study] = relationship()


class Report(Base):
    __tablename__ = "reports"
    __table_args__ = (Index("ix_reports_patient_status_created", "patient_id", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id"), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    # draft (our preliminary) | superseded (a newer analysis or a final report replaced it)
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    severity: Mapped[str] = mapped_column(String(16), default="normal")
    summary: Mapped[str] = mapped_column(String(200))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    markdown: Mapped[str] = mapped_column(Text)
    untrained_model: Mapped[bool] = mapped_column(Boolean, default=False)
    fhir_report_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    analysis: Mapped[Analysis] = relationship()


class Card(Base):
    __tablename__ = "cards"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    service_id: Mapped[str] = mapped_column(String(64), index=True)
    hook_instance: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    report_id: Mapped[str | None] = mapped_column(ForeignKey("reports.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    card_uuid: Mapped[str] = mapped_column(String(36), index=True)
    service_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    override_reason: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    accepted_suggestions: Mapped[list[Any] | None] = mapped_column(JSON)
    outcome_timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SeenJwtId(Base):
    """CDS client `jti` values seen until their token expires: the replay cache shared by API replicas."""

    __tablename__ = "cds_seen_jti"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AnalysisInstance(Base):
    """Exactly which instance versions an analysis covers (0002), so a late instance never leaks into it."""

    __tablename__ = "analysis_instances"

    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), primary_key=True)


class SrExport(Base):
    """One DICOM SR sent (or being sent) back to one PACS destination (0002); retried with backoff."""

    __tablename__ = "sr_exports"
    __table_args__ = (UniqueConstraint("analysis_id", "destination", name="uq_sr_export_destination"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    # Relative to the spool root, like Instance.spool_path.
    spool_path: Mapped[str] = mapped_column(String(255))
    # pending -> sent | failed (permanent: attempts exhausted or refused for good)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ViewerLaunchRecord(Base):
    """A SMART launch of the draft viewer waiting for its callback (0004), shared by API replicas.

    Found by the SHA-256 of its ``state`` (the value itself is never stored) and deleted by the one
    callback that takes it, so a replayed callback finds nothing on any replica. The PKCE verifier is
    sealed (AES-GCM, see ``cds.viewer.sealed_secrets``).
    """

    __tablename__ = "viewer_launches"

    state_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    iss: Mapped[str] = mapped_column(Text)
    launch: Mapped[str | None] = mapped_column(Text)
    report_id: Mapped[str | None] = mapped_column(String(36))
    sealed_code_verifier: Mapped[bytes | None] = mapped_column(LargeBinary)
    authorization_endpoint: Mapped[str] = mapped_column(Text)
    token_endpoint: Mapped[str] = mapped_column(Text)
    auth_server_issuer: Mapped[str | None] = mapped_column(Text)
    jwks_uri: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ViewerSessionRecord(Base):
    """An open clinician session of the draft viewer (0004), readable by every API replica.

    Found by the SHA-256 of the handle the page holds; the EHR's access token is sealed (AES-GCM).
    Rows past ``expires_at`` are never returned and are purged when new sessions are written.
    """

    __tablename__ = "viewer_sessions"

    handle_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    iss: Mapped[str] = mapped_column(Text)
    sealed_access_token: Mapped[bytes] = mapped_column(LargeBinary)
    patient_id: Mapped[str] = mapped_column(String(64))
    encounter_id: Mapped[str | None] = mapped_column(String(64))
    fhir_user: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[str] = mapped_column(Text)
    report_id: Mapped[str] = mapped_column(String(36))
    card_uuid: Mapped[str | None] = mapped_column(String(36))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
