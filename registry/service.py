"""The registry service: the domain steps the tasks, the CLI and the web app share.

Registering, finding and removing works, the licensed-site check, analysing an
upload and recording its matches, and rebuilding the index from the database.
Each takes only what it needs (a session or the sessionmaker, the blob store,
the matcher) and is idempotent: running it twice leaves the same rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import BlobStore, BlobStoreError, sha256_hex
from storage.models import Account, Match, MatchStatus, Upload, UploadStatus, Work, WorkKind

if TYPE_CHECKING:
    from matching import Candidate
    from matching import Engine as Matcher

__all__ = [
    "AnalysisResult",
    "PipelineError",
    "RebuildReport",
    "analyse_upload",
    "ensure_owner",
    "find_work",
    "is_licensed",
    "normalise_email",
    "rebuild_index",
    "record_matches",
    "register_work",
    "remove_work",
]

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """A pipeline step cannot proceed; the message says what to fix."""


def normalise_email(text: str) -> str:
    """One mailbox address, lower-cased, or PipelineError saying what is wrong.

    Account emails become the To: of alert emails and the contact in notices,
    so a value must be exactly one address: no list (``a@x, b@y``), no display
    name, no quoting, no whitespace or control characters (email-validator's
    syntax check, without DNS). Reserved test domains (``.test``) are allowed;
    the placeholder owners' ``.invalid`` addresses are made by
    :func:`ensure_owner`, never typed.
    """
    from notices.errors import AddressError
    from notices.mail import single_address

    try:
        return single_address(text)
    except AddressError as exc:
        raise PipelineError(str(exc)) from None


_OWNER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def ensure_owner(session: Session, *, email: str | None = None, external_id: str | None = None,
                 display_name: str = "") -> Account:
    """Find an owner by external id or email, creating it when missing.

    A new owner's email must be one valid address (:func:`normalise_email`).
    A new owner known only by an external id gets the placeholder address
    ``<id>@owners.invalid`` (a reserved domain: nothing is ever delivered),
    so the id is restricted to letters, digits, ``.``, ``_`` and ``-``.
    """
    if external_id:
        acct = session.scalar(select(Account).where(Account.external_id == external_id))
        if acct is not None:
            return acct
    if email:
        # An existing account is found by the address it has (a placeholder
        # owner's ``o01@owners.invalid`` included); only a new one is checked.
        acct = session.scalar(select(Account).where(func.lower(Account.email) == email.strip().lower()))
        if acct is not None:
            return acct
        email = normalise_email(email)
    if not email:
        if not external_id or not _OWNER_ID.match(external_id):
            raise PipelineError(f"owner id {str(external_id)[:80]!r} may use only letters, digits, '.', '_' and '-'")
        email = f"{external_id}@owners.invalid"
    acct = Account(email=email, external_id=external_id, display_name=display_name or external_id or email)
    session.add(acct)
    session.flush()
    return acct


def register_work(
    session: Session,
    blobs: BlobStore,
    matcher: Matcher,
    *,
    owner_id: int,
    data: bytes,
    filename: str,
    title: str = "",
    kind: str = "artwork",
    registration_number: str = "",
    licensed_sites: Sequence[str] = (),
    external_id: str | None = None,
) -> Work:
    """Create the work row, index the work, then keep its image.

    The matcher decodes the image once; an unreadable file raises before the
    blob is stored, and the caller's rollback removes the row. Re-registering
    the same external id for the same owner updates that owner's work instead
    of adding a second one; external ids are the owner's own names, so another
    owner's work with the same id is never touched.
    """
    from matching import WorkRef

    try:
        work_kind = WorkKind(kind)
    except ValueError:
        raise PipelineError(f"unknown kind {kind!r}: use 'logo' or 'artwork'") from None
    work = None
    if external_id:
        work = find_work(session, owner_id, external_id)
    sha = sha256_hex(data)
    if work is None:
        work = Work(owner_id=owner_id, external_id=external_id)
        session.add(work)
    work.owner_id = owner_id
    work.title = title or filename
    work.kind = work_kind
    work.blob_sha256 = sha
    work.filename = filename
    work.registration_number = registration_number
    work.licensed_sites = list(licensed_sites)
    session.flush()
    # The matcher decodes the image once; an unreadable file raises here, naming
    # it, and the caller's rollback leaves no row. Only then are the bytes kept.
    ref = WorkRef(work_id=work.id, owner_id=owner_id, kind=work_kind.value)
    matcher.register(ref, data, name=filename)
    blobs.put(data)
    if getattr(matcher, "defers_clip", False):
        _embed_after_commit(session, work.id)
    return work


def find_work(session: Session, owner_id: int, external_id: str) -> Work | None:
    """The owner's work that they call ``external_id``; never another owner's."""
    return session.scalar(select(Work).where(Work.owner_id == owner_id, Work.external_id == external_id))


def _embed_after_commit(session: Session, work_id: int) -> None:
    """Queue the work's CLIP embedding on the GPU stage once the row is committed
    (before that the GPU worker could not load it; after a rollback there is nothing to embed)."""
    from sqlalchemy import event

    def queue(_session: Session) -> None:
        from registry.root import queue_embedding

        queue_embedding(None, work_id)

    event.listen(session, "after_commit", queue, once=True)


def remove_work(session: Session, matcher: Matcher, work_id: int, *, owner_id: int | None = None) -> bool:
    """Delete a work (and its matches) and drop it from the index at once."""
    work = session.get(Work, work_id)
    if work is None or (owner_id is not None and work.owner_id != owner_id):
        return False
    matcher.unregister(work.id)
    session.delete(work)
    session.flush()
    return True


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def is_licensed(work: Work, upload: Upload) -> str | None:
    """The licensed-site entry that covers this upload, if any.

    An entry is a host (``example.com`` covers its subdomains) or a URL prefix
    (``https://mastodon.social/@shop`` covers that account's posts).
    """
    urls = [u for u in (upload.page_url, upload.image_url, upload.final_url) if u]
    author = (upload.author or "").lower().lstrip("@")
    for entry in work.licensed_sites or []:
        e = str(entry).strip().lower()
        if not e:
            continue
        if "/" in e:
            if any(u.lower().startswith(e) for u in urls):
                return str(entry)
            continue
        if e.lstrip("@") == author and author:
            return str(entry)
        for u in urls:
            h = _host(u)
            if h == e or h.endswith("." + e):
                return str(entry)
    return None


@dataclass(frozen=True)
class AnalysisResult:
    upload_id: int
    new_match_ids: list[int]
    matched_work_ids: list[int]


def record_matches(session: Session, upload: Upload, candidates: Iterable[Candidate]) -> list[int]:
    """Upsert one Match per decided (upload, work) pair; return ids created now."""
    created: list[int] = []
    for cand in candidates:
        if not cand.match:
            continue
        work = session.get(Work, cand.work_id)
        if work is None:  # removed since the search
            continue
        existing = session.scalar(
            select(Match).where(Match.upload_id == upload.id, Match.work_id == work.id)
        )
        if existing is not None:
            existing.score = float(cand.score)
            existing.signals = dict(cand.signals)
            existing.region = cand.region
            continue
        licence = is_licensed(work, upload)
        match = Match(
            upload_id=upload.id,
            work_id=work.id,
            owner_id=work.owner_id,
            score=float(cand.score),
            signals=dict(cand.signals),
            region=cand.region,
            status=MatchStatus.SUPPRESSED if licence else MatchStatus.NEW,
            status_reason=f"licensed site: {licence}" if licence else "",
        )
        session.add(match)
        session.flush()
        if licence is None:
            created.append(match.id)
    return created


def analyse_upload(session: Session, blobs: BlobStore, matcher: Matcher, upload_id: int) -> AnalysisResult | None:
    """Analyse one fetched upload and store its matches.

    Returns None when the upload is gone or has no image yet. A bad image marks
    the upload failed with the reason and is not retried.
    """
    from matching.errors import ImageError

    upload = session.get(Upload, upload_id)
    if upload is None or upload.blob_sha256 is None or upload.deleted_at is not None:
        return None
    data = blobs.get(upload.blob_sha256)
    try:
        candidates = matcher.analyse(data, name=upload.image_url or f"upload {upload.id}")
    except ImageError as exc:
        upload.status = UploadStatus.FAILED
        upload.error = str(exc)
        upload.analysed_at = datetime.now(UTC)
        log.warning("upload %s: %s", upload.id, exc, extra={"upload_id": upload.id})
        return AnalysisResult(upload.id, [], [])
    created = record_matches(session, upload, candidates)
    upload.status = UploadStatus.ANALYSED
    upload.error = None
    upload.analysed_at = datetime.now(UTC)
    return AnalysisResult(upload.id, created, [c.work_id for c in candidates if c.match])


@dataclass
class RebuildReport:
    registered: int = 0
    removed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    #: Works indexed without CLIP points because this engine loads no model
    #: (``workers.embed_stage``): the caller queues their embedding on the GPU stage.
    embed_later: list[int] = field(default_factory=list)


def rebuild_index(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    engine: Any,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildReport:
    """Make ``engine``'s index hold exactly the works in the database (``artwatch index rebuild``).

    The database is the system of record: every ``works`` row names its image
    by SHA-256 in the blob store. Each work is re-registered with the engine
    (which recomputes every signal and rewrites its index entries), works the
    engine knows but the database does not are forgotten, and finally the
    engine retrains what it learns from the whole registry (the local-feature
    vocabulary), when it has such a step.

    ``engine`` is a :class:`matching.Engine` (anything with ``register`` and
    ``unregister``). A work whose blob is missing or unreadable is reported
    in ``failed`` and left out; the others are still indexed.
    """
    from matching import WorkRef
    from matching.errors import ImageError
    from matching.index.rebuild import known_work_ids

    with sessions() as s:
        rows = [(w.id, w.owner_id, w.kind.value, w.blob_sha256, w.filename)
                for w in s.scalars(select(Work).order_by(Work.id))]
    report = RebuildReport()
    known = set(known_work_ids(engine))
    wanted = {r[0] for r in rows}
    for wid in sorted(known - wanted):
        engine.unregister(wid)
        report.removed += 1
    for i, (wid, owner_id, kind, sha, filename) in enumerate(rows, 1):
        try:
            data = blobs.get(sha)
            engine.register(WorkRef(work_id=wid, owner_id=owner_id, kind=kind), data)
            report.registered += 1
            if getattr(engine, "defers_clip", False):
                report.embed_later.append(wid)
        except (ImageError, BlobStoreError) as exc:
            log.warning("work %s (%s): %s", wid, filename, exc)
            report.failed.append((wid, f"{filename}: {exc}"))
            engine.unregister(wid)
        if progress is not None:
            progress(i, len(rows))
    retrain = getattr(engine, "retrain", None)
    if callable(retrain) and rows:
        retrain()
    return report
