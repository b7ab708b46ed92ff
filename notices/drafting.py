"""Turning stored matches into notice drafts, batched per owner and host.

Contract of :func:`draft_for_match` (called by the ``artwatch.draft_notice``
task after a match is stored):

- only matches with status ``new`` are drafted; suppressed or dismissed ones,
  and uploads already deleted at the source, return None;
- a notice lists each (work, infringing URL) at most once, ever: the
  ``notice_items (work_id, url)`` unique constraint makes a re-run of the task
  return the notice that already lists it;
- matches for the same owner and host join the one open notice (draft or in
  review) until it is approved; the ``notices.open_key`` unique constraint
  (:func:`open_key_for`) keeps that true when two workers draft at once;
- ``Notice.law`` is the copyright law for the host (``dmca`` or ``dsa``, from
  the host directory; ``dmca`` for a host it does not know). Logos are a
  different legal instrument: a notice's logo items form a trademark part,
  its artwork items the copyright part, and each part is rendered and
  validated as a complete notice of its own law (:func:`content_for_notice`);
- a host missing from the host directory gets the ``unknown_host`` flag and no
  recipient: the reviewer chooses one;
- an owner whose profile lacks the contact details the new item's law
  requires (trademark for a logo) gets :class:`~notices.errors.ProfileIncomplete`,
  naming the fields to fill in;
- an owner's template that fails on the notice's real facts (over the render
  budget, or any other rejection) does not fail the draft: the notice is
  rendered with the bundled templates and flagged ``owner_template_failed``,
  the reason in its audit trail (:func:`rerender`);
- an upload whose URL is not a clean http(s) address (another scheme, CR/LF)
  raises :class:`~notices.errors.DraftingBlocked`; a page URL that is not one
  is left out of the notice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config.settings import NoticeSettings, Settings
from notices.content import ItemRef, NoticeContent, Notifier, WorkRef, clean_block, clean_inline, web_url
from notices.errors import DraftingBlocked, ProfileIncomplete, TemplateRejected
from notices.hosts import (
    DEFAULT_HOSTS_FILE,
    HostDirectory,
    load_host_directory,
    merge_directories,
    parse_host_directory,
)
from notices.render import check_template, render_notice
from storage.documents import HOSTS_OVERRIDE, DocumentStore, build_document_store
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
    "TEMPLATE_FAILED",
    "TRADEMARK",
    "DraftingBlocked",
    "ProfileIncomplete",
    "content_for_notice",
    "draft_for_match",
    "draft_pending",
    "host_directory",
    "missing_profile_fields",
    "notice_laws",
    "notice_settings",
    "open_key_for",
    "owner_template_sets",
    "owner_templates",
    "part_laws",
    "record",
    "rerender",
    "save_owner_template",
]

OPEN_STATES = (NoticeState.DRAFT, NoticeState.IN_REVIEW)
TRADEMARK = "trademark"

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
def _cached_directory(path: str, mtime_ns: int, override: DocumentStore | None,
                      override_version: str | None) -> HostDirectory:
    directory = load_host_directory(path=Path(path))
    doc = override.get(HOSTS_OVERRIDE) if override is not None and override_version is not None else None
    if doc is not None and override is not None:
        extra = parse_host_directory(doc.data.decode("utf-8"), override.location(HOSTS_OVERRIDE))
        directory = merge_directories(directory, extra)
    return directory


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1  # missing: the loader reports it


def host_directory(settings: Settings | NoticeSettings, documents: DocumentStore | None = None) -> HostDirectory:
    """The configured host directory, plus the admin's override document when full
    Settings are given and it exists; reloaded when either changes.

    The override comes from ``documents``, by default the store that
    ``settings.shared.kind`` names (``DATA_DIR/hosts.override.toml``, or the
    database in "services" mode)."""
    ns = notice_settings(settings)
    path = Path(ns.hosts_file) if ns.hosts_file else DEFAULT_HOSTS_FILE
    if documents is None and isinstance(settings, Settings):
        documents = build_document_store(settings)
    version = documents.version(HOSTS_OVERRIDE) if documents is not None else None
    return _cached_directory(str(path), _mtime(path), documents if version is not None else None, version)


def missing_profile_fields(owner: Account, *laws: str) -> list[str]:
    """The profile fields ``owner`` still lacks for a notice under every one of ``laws``."""
    fields = dict.fromkeys(pair for law in laws for pair in _PROFILE_FIELDS[law])
    return [label for attr, label in fields if not str(getattr(owner, attr) or "").strip()]


def open_key_for(owner_id: int, host: str) -> str:
    """``Notice.open_key`` of the owner's open notice for ``host``: one per (owner, host)."""
    return f"{owner_id}:{host}"


def _law_for(copyright_law: str, kind: object) -> str:
    return TRADEMARK if kind in (WorkKind.LOGO, WorkKind.LOGO.value) else copyright_law


def part_laws(copyright_law: str, kinds: Iterable[object]) -> list[str]:
    """The laws of a notice's parts, given ``Notice.law`` and its works' kinds:
    the copyright part first, then the trademark part; ``[copyright_law]`` when
    there are no items."""
    present = {_law_for(copyright_law, kind) for kind in kinds}
    return [law for law in dict.fromkeys((copyright_law, TRADEMARK)) if law in present] or [copyright_law]


def notice_laws(session: Session, notices: Sequence[Notice]) -> dict[int, list[str]]:
    """:func:`part_laws` of each notice (by id) in one query, for listings.

    Items found removed are left out, as they are from the notice's text."""
    kinds: dict[int, list[object]] = {n.id: [] for n in notices}
    if kinds:
        rows = session.execute(
            select(NoticeItem.notice_id, Work.kind).join(Work, NoticeItem.work_id == Work.id)
            .where(NoticeItem.notice_id.in_(list(kinds)), NoticeItem.online != "removed").distinct())
        for notice_id, kind in rows:
            kinds[notice_id].append(kind)
    return {n.id: part_laws(n.law, kinds[n.id]) for n in notices}


def record(session: Session, notice: Notice, actor: str, action: str, now: datetime | None = None,
           **detail: object) -> AuditEvent:
    """Append one audit event for ``notice`` (who, what, when, details)."""
    event = AuditEvent(actor=clean_inline(actor, 320) or "unknown", action=action, entity="notice",
                       entity_id=notice.id, detail=dict(detail), at=now or utcnow())
    session.add(event)
    return event


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
                       today: datetime | None = None) -> list[NoticeContent]:
    """The facts the notice must state, built from the database: one
    NoticeContent per part (:func:`part_laws`), each with only its own items
    and works. A notice without items has one part, of ``notice.law``.

    Items whose content was found removed before sending are left out."""
    owner = session.get(Account, notice.owner_id)
    if owner is None:
        raise DraftingBlocked(f"notice {notice.id}: its owner no longer exists")
    entry = directory.lookup(notice.host) if directory is not None else None
    works: dict[str, dict[int, WorkRef]] = {}
    items: dict[str, list[ItemRef]] = {}
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
        law = _law_for(notice.law, work.kind)
        if work.id not in works.setdefault(law, {}):
            works[law][work.id] = WorkRef(title, clean_inline(work.registration_number, 100),
                                          work.kind.value if isinstance(work.kind, WorkKind) else str(work.kind))
        items.setdefault(law, []).append(ItemRef(
            url=clean_inline(item.url),
            page_url=web_url(upload.page_url),
            work_title=title,
            captured_at=_when(upload.fetched_at),
            author=clean_inline(upload.author, 200),
        ))
    notifier = Notifier(clean_inline(owner.legal_name, 200), clean_block(owner.postal_address),
                        clean_inline(owner.phone, 64), clean_inline(owner.email, 320))
    date = (today or utcnow()).strftime("%Y-%m-%d")
    return [NoticeContent(
        law=law,
        host_name=clean_inline(entry.name if entry else notice.host, 200),
        host_domain=clean_inline(notice.host, 255),
        notifier=notifier,
        works=tuple(works.get(law, {}).values()),
        items=tuple(items.get(law, ())),
        date=date,
    ) for law in part_laws(notice.law, [work.kind for _, _, work in rows])]


def owner_templates(session: Session, owner_id: int, law: str) -> dict[str, str]:
    rows = session.scalars(select(NoticeTemplate).where(NoticeTemplate.owner_id == owner_id,
                                                        NoticeTemplate.law == law))
    return {row.variant: row.source for row in rows}


def owner_template_sets(session: Session, owner_id: int) -> dict[str, dict[str, str]]:
    """All the owner's saved templates: {law: {variant: source}}."""
    sets: dict[str, dict[str, str]] = {}
    for row in session.scalars(select(NoticeTemplate).where(NoticeTemplate.owner_id == owner_id)):
        sets.setdefault(row.law, {})[row.variant] = row.source
    return sets


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


TEMPLATE_FAILED = "owner_template_failed"


def rerender(session: Session, notice: Notice, directory: HostDirectory | None = None) -> None:
    """Re-render subject and bodies from the current items (not for edited notices).

    The owner's templates render on the real facts within the render budget
    (:mod:`notices.budget`); one that fails there (passed the gate on sample
    facts, but loops or grows on these) cannot hold up the draft or be retried
    into the task's time limit. The notice is then rendered with the bundled
    templates and carries the ``owner_template_failed`` flag, with the reason
    in its audit trail, for the reviewer to see; the flag is cleared once the
    owner's templates render again."""
    parts = content_for_notice(session, notice, directory)
    try:
        rendered = render_notice(parts, owner_template_sets(session, notice.owner_id))
        notice.flags = [f for f in notice.flags if f != TEMPLATE_FAILED]
    except TemplateRejected as exc:
        rendered = render_notice(parts)
        if TEMPLATE_FAILED not in notice.flags:
            notice.flags = [*notice.flags, TEMPLATE_FAILED]
        record(session, notice, "artwatch", TEMPLATE_FAILED, reason=str(exc),
               fallback="drafted with the bundled templates instead")
    notice.subject = rendered.subject
    notice.body_text = rendered.text
    notice.body_html = rendered.html


def draft_for_match(session: Session, match_id: int, settings: Settings | NoticeSettings) -> Notice | None:
    """Add the match to its owner's open notice for the host (creating it if needed).

    Returns the notice listing the match's (work, URL), or None when the match
    is not to be drafted. Raises ProfileIncomplete / DraftingBlocked."""
    match = session.get(Match, match_id)
    # Triage's "ignore" and "not sure", and licensed sites, are not drafted; a
    # match whose notice has moved on returns that notice.
    if match is None or match.status in (MatchStatus.SUPPRESSED, MatchStatus.DISMISSED, MatchStatus.UNSURE):
        return None
    upload, work = match.upload, match.work
    if upload is None or work is None or upload.deleted_at is not None:
        return None
    url = upload.canonical_url
    if not web_url(url):
        raise DraftingBlocked(f"match {match_id}: the upload URL {clean_inline(url, 200)!r} is not a web address")
    existing = session.scalar(select(NoticeItem).where(NoticeItem.work_id == work.id, NoticeItem.url == url))
    if existing is not None:
        return existing.notice
    if match.status not in (MatchStatus.NEW, MatchStatus.INFRINGING):
        return None  # a status its notice gave it (notices.workflow.follow_notice)

    directory = host_directory(settings)
    entry = directory.lookup(upload.page_url or "") or directory.lookup(upload.image_url or "") \
        or directory.lookup(url)
    host = entry.key if entry is not None else _host_of(upload)
    copyright_law = entry.law if entry is not None else "dmca"
    law = _law_for(copyright_law, work.kind)

    owner = session.get(Account, match.owner_id)
    if owner is None:
        return None
    missing = missing_profile_fields(owner, law)
    if missing:
        raise ProfileIncomplete(owner.email, missing)

    notice = _open_notice(session, owner, host, copyright_law, entry.recipient if entry else "",
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
        rerender(session, notice, directory)
    record(session, notice, "artwatch", "item_added", match_id=match.id, work_id=work.id, url=clean_inline(url))
    session.flush()
    return notice


def _flags(entry: object) -> list[str]:
    if entry is None:
        return ["unknown_host"]
    return ["verify_recipient"] if getattr(entry, "verify", False) else []


def _open_notice(session: Session, owner: Account, host: str, law: str, recipient: str, flags: list[str],
                 match_id: int) -> Notice:
    key = open_key_for(owner.id, host)
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
    q = select(Match.id).where(Match.status.in_((MatchStatus.NEW, MatchStatus.INFRINGING)), ~listed).order_by(Match.id)
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
