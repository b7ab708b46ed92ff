"""Turning stored matches into notice drafts, batched per owner and host.

Contract of :func:`draft_for_match` (called by the ``artwatch.draft_notice``
task after a match is stored):

- only matches with status ``new`` are drafted; suppressed or dismissed ones,
  and uploads already deleted at the source, return None;
- a notice lists each (work, infringing URL) at most once, ever: the
  ``notice_items (work_id, url)`` unique constraint makes a re-run of the task
  return the notice that already lists it;
- matches for the same owner, host and law join the one open notice (draft or
  in review) until it is approved; the ``notices.open_key`` unique constraint
  keeps that true when two workers draft at once. Logos go into a separate
  trademark complaint, because that is a different legal instrument;
- a host missing from the host directory gets the ``unknown_host`` flag and no
  recipient: the reviewer chooses one;
- an owner whose profile lacks the contact details the law requires gets
  :class:`~notices.errors.ProfileIncomplete`, naming the fields to fill in.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config.settings import NoticeSettings, Settings
from notices.content import ItemRef, NoticeContent, Notifier, WorkRef, clean_block, clean_inline
from notices.errors import DraftingBlocked, ProfileIncomplete, TemplateRejected
from notices.hosts import (
    DEFAULT_HOSTS_FILE,
    OVERRIDE_FILE_NAME,
    HostDirectory,
    load_host_directory,
    merge_directories,
)
from notices.render import check_template, render_notice
from storage.models import (
    Account,
    AuditEvent,
    Match,
    MatchStatus,
    Notice,
    NoticeItem,
    NoticeState,
    NoticeTemplate,
    Upload,
    Work,
    WorkKind,
    utcnow,
)

__all__ = [
    "OPEN_STATES",
    "DraftingBlocked",
    "ProfileIncomplete",
    "content_for_notice",
    "draft_for_match",
    "draft_pending",
    "host_directory",
    "missing_profile_fields",
    "notice_settings",
    "owner_templates",
    "record",
    "rerender",
    "save_owner_template",
]

OPEN_STATES = (NoticeState.DRAFT, NoticeState.IN_REVIEW)

_PROFILE_FIELDS = {
    "dmca": (("legal_name", "legal name"), ("postal_address", "postal address"), ("phone", "phone number"),
             ("email", "email address")),
    "trademark": (("legal_name", "legal name"), ("postal_address", "postal address"),
                  ("phone", "phone number"), ("email", "email address")),
    "dsa": (("legal_name", "legal name"), ("email", "email address")),
}


def notice_settings(settings: Settings | NoticeSettings) -> NoticeSettings:
    return settings.notices if isinstance(settings, Settings) else settings


@lru_cache(maxsize=8)
def _cached_directory(path: str, mtime_ns: int, override: str, override_mtime_ns: int) -> HostDirectory:
    directory = load_host_directory(path=Path(path))
    if override:
        directory = merge_directories(directory, load_host_directory(path=Path(override)))
    return directory


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1  # missing: the loader reports it (or there is no override)


def host_directory(settings: Settings | NoticeSettings) -> HostDirectory:
    """The configured host directory, plus ``DATA_DIR/hosts.override.toml`` when
    full Settings are given and the file exists; reloaded when either changes."""
    ns = notice_settings(settings)
    path = Path(ns.hosts_file) if ns.hosts_file else DEFAULT_HOSTS_FILE
    override = Path(settings.data_dir) / OVERRIDE_FILE_NAME if isinstance(settings, Settings) else None
    if override is not None and not override.exists():
        override = None
    return _cached_directory(str(path), _mtime(path), str(override or ""),
                             _mtime(override) if override else -1)


def missing_profile_fields(owner: Account, law: str) -> list[str]:
    return [label for attr, label in _PROFILE_FIELDS[law] if not str(getattr(owner, attr) or "").strip()]


def record(session: Session, notice: Notice, actor: str, action: str, now: datetime | None = None,
           **detail: object) -> AuditEvent:
    """Append one audit event for ``notice`` (who, what, when, details)."""
    event = AuditEvent(actor=clean_inline(actor, 320) or "unknown", action=action, entity="notice",
                       entity_id=notice.id, detail=dict(detail), at=now or utcnow())
    session.add(event)
    return event


def _web_url(url: str) -> str:
    return url if urlsplit(url).scheme in ("http", "https") else ""


def _host_of(upload: Upload) -> str:
    for url in (upload.page_url, upload.image_url, upload.canonical_url):
        host = (urlsplit(url).hostname or "").lower() if url else ""
        if host:
            return host.removeprefix("www.")
    return upload.host


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def content_for_notice(session: Session, notice: Notice, directory: HostDirectory | None = None,
                       today: datetime | None = None) -> NoticeContent:
    """The facts the notice must state, built from the database.

    Items whose content was found removed before sending are left out."""
    owner = session.get(Account, notice.owner_id)
    if owner is None:
        raise DraftingBlocked(f"notice {notice.id}: its owner no longer exists")
    entry = directory.lookup(notice.host) if directory is not None else None
    works: dict[int, WorkRef] = {}
    items: list[ItemRef] = []
    session.flush()
    rows = session.execute(
        select(NoticeItem, Upload, Work)
        .join(Match, NoticeItem.match_id == Match.id)
        .join(Upload, Match.upload_id == Upload.id)
        .join(Work, NoticeItem.work_id == Work.id)
        .where(NoticeItem.notice_id == notice.id, NoticeItem.online != "removed")
        .order_by(NoticeItem.id)
    ).all()
    for item, upload, work in rows:
        title = clean_inline(work.title or work.filename or f"work #{work.id}", 300)
        if work.id not in works:
            works[work.id] = WorkRef(title, clean_inline(work.registration_number, 100),
                                     work.kind.value if isinstance(work.kind, WorkKind) else str(work.kind))
        items.append(ItemRef(
            url=clean_inline(item.url),
            page_url=clean_inline(_web_url(upload.page_url)),
            work_title=title,
            captured_at=_when(upload.fetched_at),
            author=clean_inline(upload.author, 200),
        ))
    notifier = Notifier(clean_inline(owner.legal_name, 200), clean_block(owner.postal_address),
                        clean_inline(owner.phone, 64), clean_inline(owner.email, 320))
    return NoticeContent(
        law=notice.law,
        host_name=clean_inline(entry.name if entry else notice.host, 200),
        host_domain=clean_inline(notice.host, 255),
        notifier=notifier,
        works=tuple(works.values()),
        items=tuple(items),
        date=(today or utcnow()).strftime("%Y-%m-%d"),
    )


def owner_templates(session: Session, owner_id: int, law: str) -> dict[str, str]:
    rows = session.scalars(select(NoticeTemplate).where(NoticeTemplate.owner_id == owner_id,
                                                        NoticeTemplate.law == law))
    return {row.variant: row.source for row in rows}


def save_owner_template(session: Session, owner_id: int, law: str, variant: str, source: str,
                        actor: str) -> NoticeTemplate:
    """Store an owner's template after :func:`notices.render.check_template` accepted it.

    Raises TemplateRejected (with the line number when there is one)."""
    check_template(law, variant, source)
    row = session.scalar(select(NoticeTemplate).where(NoticeTemplate.owner_id == owner_id,
                                                      NoticeTemplate.law == law, NoticeTemplate.variant == variant))
    if row is None:
        row = NoticeTemplate(owner_id=owner_id, law=law, variant=variant, source=source)
        session.add(row)
    else:
        row.source = source
    session.add(AuditEvent(actor=clean_inline(actor, 320), action="template_saved", entity="account",
                           entity_id=owner_id, detail={"law": law, "variant": variant}))
    session.flush()
    return row


def rerender(session: Session, notice: Notice, directory: HostDirectory | None = None) -> None:
    """Re-render subject and bodies from the current items (not for edited notices)."""
    content = content_for_notice(session, notice, directory)
    rendered = render_notice(content, owner_templates(session, notice.owner_id, notice.law))
    notice.subject = rendered.subject
    notice.body_text = rendered.text
    notice.body_html = rendered.html


def draft_for_match(session: Session, match_id: int, settings: Settings | NoticeSettings) -> Notice | None:
    """Add the match to its owner's open notice for the host (creating it if needed).

    Returns the notice listing the match's (work, URL), or None when the match
    is not to be drafted. Raises ProfileIncomplete / DraftingBlocked."""
    match = session.get(Match, match_id)
    if match is None or match.status != MatchStatus.NEW:
        return None
    upload, work = match.upload, match.work
    if upload is None or work is None or upload.deleted_at is not None:
        return None
    url = upload.canonical_url
    if not _web_url(url):
        raise DraftingBlocked(f"match {match_id}: the upload URL {clean_inline(url, 200)!r} is not a web address")
    existing = session.scalar(select(NoticeItem).where(NoticeItem.work_id == work.id, NoticeItem.url == url))
    if existing is not None:
        return existing.notice

    directory = host_directory(settings)
    entry = directory.lookup(upload.page_url or "") or directory.lookup(upload.image_url or "") \
        or directory.lookup(url)
    host = entry.key if entry is not None else _host_of(upload)
    law = "trademark" if work.kind == WorkKind.LOGO else (entry.law if entry is not None else "dmca")

    owner = session.get(Account, match.owner_id)
    if owner is None:
        return None
    missing = missing_profile_fields(owner, law)
    if missing:
        raise ProfileIncomplete(owner.email, missing)

    notice = _open_notice(session, owner, host, law, entry.recipient if entry else "",
                          _flags(entry), match_id)
    try:
        with session.begin_nested():
            item = NoticeItem(notice_id=notice.id, match_id=match.id, work_id=work.id, url=url)
            session.add(item)
    except IntegrityError:
        # Another run of this task listed the same (work, URL) first.
        existing = session.scalar(select(NoticeItem).where(NoticeItem.work_id == work.id, NoticeItem.url == url))
        if existing is None:
            raise
        return existing.notice
    session.refresh(notice, ["items"])
    if notice.edited:
        if "items_added_after_edit" not in notice.flags:
            notice.flags = [*notice.flags, "items_added_after_edit"]
    else:
        try:
            rerender(session, notice, directory)
        except TemplateRejected as exc:
            raise DraftingBlocked(f"notice {notice.id}: the owner's template no longer renders: {exc}") from None
    record(session, notice, "artwatch", "item_added", match_id=match.id, work_id=work.id, url=clean_inline(url))
    session.flush()
    return notice


def _flags(entry: object) -> list[str]:
    if entry is None:
        return ["unknown_host"]
    return ["verify_recipient"] if getattr(entry, "verify", False) else []


def _open_notice(session: Session, owner: Account, host: str, law: str, recipient: str, flags: list[str],
                 match_id: int) -> Notice:
    key = f"{owner.id}:{host}:{law}"
    notice = session.scalar(select(Notice).where(Notice.open_key == key))
    if notice is not None:
        return notice
    notice = Notice(owner_id=owner.id, host=host, law=law, state=NoticeState.DRAFT, recipient=recipient,
                    flags=list(flags), open_key=key)
    try:
        with session.begin_nested():
            session.add(notice)
    except IntegrityError:
        found = session.scalar(select(Notice).where(Notice.open_key == key))
        if found is None:
            raise
        return found
    record(session, notice, "artwatch", "drafted", host=host, law=law, recipient=recipient, flags=list(flags),
           first_match_id=match_id)
    return notice


def draft_pending(session: Session, settings: Settings | NoticeSettings,
                  owner_id: int | None = None) -> tuple[list[int], dict[str, str]]:
    """Draft every new match that no notice lists yet (after an owner completed
    their profile, or after the host directory changed).

    Returns (ids of notices touched, {owner email: why drafting is still blocked}).
    Each match is drafted in its own savepoint, so one blocked owner does not
    stop the others."""
    listed = select(NoticeItem.id).where(NoticeItem.match_id == Match.id).exists()
    q = select(Match.id).where(Match.status == MatchStatus.NEW, ~listed).order_by(Match.id)
    if owner_id is not None:
        q = q.where(Match.owner_id == owner_id)
    touched: list[int] = []
    blocked: dict[str, str] = {}
    for match_id in list(session.scalars(q)):
        owner = session.scalar(select(Account).join(Match, Match.owner_id == Account.id)
                               .where(Match.id == match_id))
        if owner is not None and owner.email in blocked:
            continue
        try:
            with session.begin_nested():
                notice = draft_for_match(session, match_id, settings)
        except DraftingBlocked as exc:
            blocked[owner.email if owner is not None else f"match {match_id}"] = str(exc)
            continue
        if notice is not None and notice.id not in touched:
            touched.append(notice.id)
    return touched, blocked
