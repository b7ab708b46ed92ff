"""Case history: the audit events of a notice or a match, told in plain language.

Every workflow step writes an :class:`~storage.models.AuditEvent` (notices:
``entity="notice"``; a match's status following its notice:
``entity="match"``). :func:`notice_timeline` and :func:`match_timeline` turn
those rows into entries a person reads: when, who, what happened, and which
item it concerns (the notice, the match, or the URL). Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from storage.models import AuditEvent, Match, Notice, NoticeItem

__all__ = ["TimelineEntry", "describe", "match_timeline", "notice_timeline"]

_SYSTEM = {"artwatch": "artwatch (automatic)", "artwatch-followup": "artwatch follow-up (automatic)"}
_VIA = {"smtp": "by email", "web_form": "through the host's web form", "export": "as an exported file"}
_RESOLUTION = {
    "removed": "the content was removed",
    "still_online": "the content is still online",
    "counter_noticed": "the uploader sent a counter-notice",
}
_REPLY = {
    "removed": "the host says it removed the content",
    "refused": "the host refused to remove the content",
    "no_answer": "no answer from the host yet",
}
_FORMAT = {"eml": "an email file (.eml)", "pdf": "a PDF", "bundle": "the evidence bundle (zip)"}
_STATUS = {
    "new": "new",
    "suppressed": "licensed (suppressed)",
    "dismissed": "dismissed",
    "notice_approved": "notice approved",
    "notice_sent": "notice sent",
    "removed": "removed",
    "still_online": "still online",
    "counter_noticed": "counter-notice received",
}
_FIELDS = {"body_text": "the text", "subject": "the subject", "recipient": "the recipient", "law": "the law"}


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    who: str
    what: str
    item: str  # "notice #3", "match #7", a URL
    href: str  # where the item is shown ("" when nowhere)
    action: str  # the audit action, for styling and tests


def _who(actor: str) -> str:
    return _SYSTEM.get(actor, actor)


def _str(detail: dict[str, Any], key: str) -> str:
    value = detail.get(key)
    return "" if value is None else str(value)


def describe(event: AuditEvent) -> str:
    """One sentence for one audit event (its subject is the person or artwatch in ``who``)."""
    d: dict[str, Any] = dict(event.detail or {})
    a = event.action
    if a == "drafted":
        text = f"drafted the notice to {_str(d, 'recipient') or 'a recipient still to be chosen'}"
        if "unknown_host" in (d.get("flags") or []):
            text += " (the host is not in the host directory, so a person must choose who receives it)"
        return text
    if a == "item_added":
        return f"added {_str(d, 'url')} to the notice"
    if a == "submitted":
        return "sent the draft for review"
    if a == "approved":
        return "approved the notice after answering the fair-use checklist (no fair-use factor applies)"
    if a == "rejected":
        return f"rejected the notice: {_str(d, 'reason')}"
    if a == "edited":
        fields = [_FIELDS.get(k, k) for k in (d.get("diff") or {})]
        return "edited " + (", ".join(fields) or "the notice")
    if a == "recipient_confirmed":
        return f"chose the recipient {_str(d, 'recipient')}"
    if a == "sent":
        return f"sent the notice to {_str(d, 'recipient')} {_VIA.get(_str(d, 'via'), _str(d, 'via'))}".rstrip()
    if a == "host_replied":
        note = _str(d, "note")
        return f"recorded the host's reply: {_REPLY.get(_str(d, 'reply'), _str(d, 'reply'))}" + (
            f" ({note})" if note else "")
    if a == "resolved":
        text = f"closed the case: {_RESOLUTION.get(_str(d, 'resolution'), _str(d, 'resolution'))}"
        still = d.get("still_online") or []
        if still:
            text += " (" + ", ".join(str(u) for u in still) + ")"
        if d.get("note"):
            text += f"; {_str(d, 'note')}"
        return text
    if a == "counter_notice":
        return (f"recorded a counter-notice received on {_str(d, 'received')}: the host may restore the material "
                f"from {_str(d, 'restore_not_before')} and must by {_str(d, 'restore_deadline')} unless the owner "
                "files an action")
    if a == "returned_to_review":
        removed = d.get("removed") or []
        return "returned the notice to review: " + (
            ", ".join(str(u) for u in removed) + " already removed" if removed else _str(d, "reason"))
    if a == "refetch_blocked":
        return f"could not re-check {_str(d, 'url')}: {_str(d, 'reason')}"
    if a == "exported":
        text = f"exported the notice as {_FORMAT.get(_str(d, 'format'), _str(d, 'format'))}"
        return text + (" marked DRAFT (not approved)" if d.get("draft") else "")
    if a == "owner_template_failed":
        return f"could not use the owner's template: {_str(d, 'reason')}"
    if a == "status_changed":
        before = _STATUS.get(_str(d, "from"), _str(d, "from"))
        after = _STATUS.get(_str(d, "to"), _str(d, "to"))
        return f"changed the match from {before} to {after}"
    return a.replace("_", " ")


def _entries(events: Iterable[AuditEvent], notice_ids: set[int]) -> list[TimelineEntry]:
    out: list[TimelineEntry] = []
    for e in events:
        if (e.action == "edited" and set((e.detail or {}).get("diff") or {}) == {"recipient"} and out
                and out[-1].action == "recipient_confirmed"):
            continue  # the same step as "chose the recipient" just above
        if e.entity == "notice":
            item, href = f"notice #{e.entity_id}", f"/notices/{e.entity_id}"
            url = (e.detail or {}).get("url")
            if e.action in ("item_added", "refetch_blocked") and url:
                item = f"notice #{e.entity_id}: {url}"
        else:
            item, href = f"match #{e.entity_id}", f"/matches/{e.entity_id}"
            notice = (e.detail or {}).get("notice")
            if isinstance(notice, int) and notice in notice_ids:
                item += f" (notice #{notice})"
        out.append(TimelineEntry(e.at, _who(e.actor), describe(e), item, href, e.action))
    return out


def notice_timeline(session: Session, notice: Notice) -> list[TimelineEntry]:
    """The notice's own events and those of the matches it lists, oldest first."""
    match_ids = [i.match_id for i in notice.items]
    cond: ColumnElement[bool] = (AuditEvent.entity == "notice") & (AuditEvent.entity_id == notice.id)
    if match_ids:
        cond = or_(cond, (AuditEvent.entity == "match") & AuditEvent.entity_id.in_(match_ids)
                   & (AuditEvent.action == "status_changed"))
    events = session.scalars(select(AuditEvent).where(cond).order_by(AuditEvent.at, AuditEvent.id)).all()
    return _entries(events, {notice.id})


def match_timeline(session: Session, match: Match) -> list[TimelineEntry]:
    """Found (from the match row), then the match's events and those of every notice listing it."""
    notice_ids = set(session.scalars(select(NoticeItem.notice_id).where(NoticeItem.match_id == match.id)))
    cond: ColumnElement[bool] = (AuditEvent.entity == "match") & (AuditEvent.entity_id == match.id)
    if notice_ids:
        cond = or_(cond, (AuditEvent.entity == "notice") & AuditEvent.entity_id.in_(notice_ids))
    events = session.scalars(select(AuditEvent).where(cond).order_by(AuditEvent.at, AuditEvent.id)).all()
    upload = match.upload
    where = (upload.page_url or upload.canonical_url) if upload is not None else ""
    found = TimelineEntry(match.created_at, "artwatch (automatic)",
                          f"found {match.work.title if match.work else 'the work'} at {where} "
                          f"(score {match.score:.0%})", f"match #{match.id}", f"/matches/{match.id}", "found")
    return [found, *_entries(events, notice_ids)]
