"""SQLAlchemy models: the system of record.

The vector index and the blob store are derived from or keyed by these rows:
``artwatch index rebuild`` recreates the index from ``works``, and every blob
is named by the SHA-256 stored here. Natural keys carry unique constraints so
that a task that runs twice upserts instead of duplicating:

- ``uploads.canonical_url`` (one row per sighting URL; blobs are shared),
- ``works (owner_id, external_id)``: an owner's own id names one of their works,
- ``matches (upload_id, work_id)``,
- ``notice_items (work_id, url)``: a notice is drafted at most once per
  (work, infringing URL).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Account",
    "AuditEvent",
    "Base",
    "DeadLetter",
    "FeatureChange",
    "FeatureSnapshot",
    "FeatureVocab",
    "FeatureWork",
    "LoginFailure",
    "Match",
    "MatchStatus",
    "Notice",
    "NoticeItem",
    "NoticeState",
    "NoticeTemplate",
    "Role",
    "SharedDocument",
    "Sighting",
    "Source",
    "Upload",
    "UploadStatus",
    "WebJob",
    "WebSession",
    "Work",
    "WorkKind",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native ENUM type) so adding a value needs no
    # PostgreSQL type migration.
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Role(str, enum.Enum):
    OWNER = "owner"
    REVIEWER = "reviewer"
    ADMIN = "admin"


class WorkKind(str, enum.Enum):
    LOGO = "logo"
    ARTWORK = "artwork"


class UploadStatus(str, enum.Enum):
    PENDING = "pending"
    ANALYSED = "analysed"
    FAILED = "failed"


class MatchStatus(str, enum.Enum):
    NEW = "new"
    SUPPRESSED = "suppressed"  # licensed site: recorded, never flagged
    DISMISSED = "dismissed"  # triage: ignore
    INFRINGING = "infringing"  # triage: confirmed by a person, drafted like a new match
    UNSURE = "unsure"  # triage: not sure, kept for a second look
    # Following the match's notice (notices.workflow.follow_notice):
    NOTICE_APPROVED = "notice_approved"
    NOTICE_SENT = "notice_sent"
    REMOVED = "removed"
    STILL_ONLINE = "still_online"
    COUNTER_NOTICED = "counter_noticed"


class NoticeState(str, enum.Enum):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    SENT = "sent"
    RESOLVED = "resolved"


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Free-form id used by imports (e.g. "o03"); unique when present.
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.OWNER)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    api_token_hash: Mapped[str | None] = mapped_column(String(128), unique=True)
    # Contact details a notice needs (legal name, postal address, phone).
    legal_name: Mapped[str] = mapped_column(String(200), default="")
    postal_address: Mapped[str] = mapped_column(Text, default="")
    phone: Mapped[str] = mapped_column(String(64), default="")
    alert_mode: Mapped[str] = mapped_column(String(16), default="instant")
    unsubscribe_token: Mapped[str | None] = mapped_column(String(64), unique=True)
    # When the last daily digest went out (notices.alerts sends at most one per day).
    last_digest_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    works: Mapped[list[Work]] = relationship(back_populates="owner", cascade="all, delete-orphan")


class Work(Base):
    """A registered logo or artwork.

    ``external_id`` is the owner's own name for the work (``works add --id``,
    an import manifest's ``id``): unique per owner, never across owners, so
    one owner re-using another's id registers a work of their own instead of
    replacing theirs (migration 0002)."""

    __tablename__ = "works"
    __table_args__ = (UniqueConstraint("owner_id", "external_id", name="uq_work_owner_external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(64))
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    kind: Mapped[WorkKind] = mapped_column(_enum(WorkKind), default=WorkKind.ARTWORK)
    blob_sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(300), default="")
    registration_number: Mapped[str] = mapped_column(String(100), default="")
    # Hosts or account URLs licensed to use the work: their matches are
    # recorded as suppressed and never flagged.
    licensed_sites: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    owner: Mapped[Account] = relationship(back_populates="works")


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cursor: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    poll_seconds: Mapped[int] = mapped_column(Integer, default=300)
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    uploads_seen: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Upload(Base):
    """One sighting of an image at a URL, with the evidence of its capture."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    canonical_url: Mapped[str] = mapped_column(String(2048), unique=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"))
    host: Mapped[str] = mapped_column(String(255), default="", index=True)
    page_url: Mapped[str] = mapped_column(Text, default="")
    image_url: Mapped[str] = mapped_column(Text, default="")
    final_url: Mapped[str] = mapped_column(Text, default="")
    post_id: Mapped[str] = mapped_column(String(255), default="")
    author: Mapped[str] = mapped_column(String(300), default="")
    post_text: Mapped[str] = mapped_column(Text, default="")
    headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    blob_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    content_type: Mapped[str] = mapped_column(String(64), default="")
    fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[UploadStatus] = mapped_column(_enum(UploadStatus), default=UploadStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    analysed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Set by the stalled-upload sweep (workers.stalled) each time it queues the
    # upload again because its message was lost; None: queued once, at creation.
    redispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    redispatches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Sighting(Base):
    """One post showing an upload's image URL (crawler-owned).

    The Upload row holds the evidence of the first sighting; the same image URL
    seen in another post (a boost, a cross-post) adds a sighting here instead
    of a duplicate upload. The same bytes at another URL are another Upload
    sharing ``blob_sha256``."""

    __tablename__ = "sightings"
    __table_args__ = (UniqueConstraint("upload_id", "post_id", name="uq_sighting_upload_post"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"), index=True)
    post_id: Mapped[str] = mapped_column(String(255), default="")
    page_url: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(300), default="")
    post_text: Mapped[str] = mapped_column(Text, default="")
    posted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Match(Base):
    __tablename__ = "matches"
    __table_args__ = (UniqueConstraint("upload_id", "work_id", name="uq_match_upload_work"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    work_id: Mapped[int] = mapped_column(ForeignKey("works.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    score: Mapped[float] = mapped_column(Float)
    # Per-signal scores kept for the reviewer, e.g. {"pdq": 0.9, "local": 0.8}.
    signals: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Where the work sits in the upload: [[x, y], ...] in upload pixels.
    region: Mapped[list[Any] | None] = mapped_column(JSON)
    status: Mapped[MatchStatus] = mapped_column(_enum(MatchStatus), default=MatchStatus.NEW)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    alerted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    upload: Mapped[Upload] = relationship()
    work: Mapped[Work] = relationship()


class Notice(Base):
    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    law: Mapped[str] = mapped_column(String(32), default="dmca")
    state: Mapped[NoticeState] = mapped_column(_enum(NoticeState), default=NoticeState.DRAFT)
    recipient: Mapped[str] = mapped_column(Text, default="")
    # Flags the reviewer must clear, e.g. ["unknown_host"].
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    edited: Mapped[bool] = mapped_column(Boolean, default=False)
    fair_use: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reject_reason: Mapped[str] = mapped_column(Text, default="")
    resolution: Mapped[str] = mapped_column(String(32), default="")
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    followup_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    counter_notice_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    restore_deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Earliest restore date after a counter-notice (10 business days; the
    # deadline above is the 14-business-day limit).
    restore_not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "smtp", "export" or "web_form": how the notice left.
    sent_via: Mapped[str] = mapped_column(String(16), default="")
    # "<owner_id>:<host>" (notices.drafting.open_key_for) while the notice is
    # open (draft or in review), NULL afterwards: the unique constraint keeps
    # one open batch per key even when two workers draft at once.
    open_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    items: Mapped[list[NoticeItem]] = relationship(
        back_populates="notice", cascade="all, delete-orphan", order_by="NoticeItem.id"
    )


class NoticeItem(Base):
    __tablename__ = "notice_items"
    __table_args__ = (UniqueConstraint("work_id", "url", name="uq_notice_item_work_url"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id", ondelete="CASCADE"), index=True)
    match_id: Mapped[int] = mapped_column(ForeignKey("matches.id", ondelete="CASCADE"))
    work_id: Mapped[int] = mapped_column(ForeignKey("works.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    online: Mapped[str] = mapped_column(String(16), default="")  # "", online, removed
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    notice: Mapped[Notice] = relationship(back_populates="items")
    match: Mapped[Match] = relationship()


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int] = mapped_column(Integer, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class NoticeTemplate(Base):
    """An owner's own wording for one law and variant ("text" or "html").

    Stored only after ``notices.render.check_template`` accepted it."""

    __tablename__ = "notice_templates"
    __table_args__ = (UniqueConstraint("owner_id", "law", "variant", name="uq_notice_template_owner_law_variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    law: Mapped[str] = mapped_column(String(32))
    variant: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(JSON, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    tries: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- Web app: sessions, login throttling, long-running jobs (owned by webapp) ---


class WebSession(Base):
    """A logged-in browser. The cookie holds a random key; only its SHA-256 is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoginFailure(Base):
    """One failed login, kept for the throttle window (by email and by client address)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_email_at", "email", "at"), Index("ix_login_failures_ip_at", "ip", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebJob(Base):
    """A long operation started from the web (e.g. importing many works), polled for progress."""

    __tablename__ = "web_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, done, failed
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- Shared state in "services" mode (storage.documents.SqlDocumentStore) ---


class SharedDocument(Base):
    """One whole shared document (score calibration, host override, secret key) by name.

    ``version`` is a random token rewritten with every put, so readers check it
    alone and reread the data only when it changed."""

    __tablename__ = "shared_documents"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    version: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- Local-feature registry with [shared] kind = "services" (owned by matching.store.sql) ---
# Arrays (work features, vocabularies, snapshot arrays) are blob-store objects;
# these rows name them.

#: A bigserial on PostgreSQL; SQLite only autoincrements an INTEGER primary key.
_BigId = BigInteger().with_variant(Integer, "sqlite")


class FeatureChange(Base):
    """One line of the registry's change feed; ``id`` is the cursor readers keep."""

    __tablename__ = "feature_changes"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    op: Mapped[str] = mapped_column(String(8))  # add, del, vocab
    work_id: Mapped[int | None] = mapped_column(BigInteger)
    vocab: Mapped[str | None] = mapped_column(String(64))
    works: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeatureWork(Base):
    """A registered work's local features: the blob holding its arrays."""

    __tablename__ = "feature_works"

    work_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    blob_key: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeatureVocab(Base):
    """A published vocabulary; the current one has the highest id."""

    __tablename__ = "feature_vocabs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    blob_key: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    works: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeatureSnapshot(Base):
    """A postings snapshot of one vocabulary; its current one has the highest id.
    ``arrays`` maps each array's name to its blob key."""

    __tablename__ = "feature_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    vocab: Mapped[str] = mapped_column(String(64), index=True)
    cursor: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    arrays: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
