"""The review workflow: a state machine whose every step is audited.

::

    draft ──submit──► in_review ──approve──► approved ──mark_sent──► sent ──resolve──► resolved
      │  ▲               │                      │                              (removed | still_online
      │  └──(edit)───────┤                      │                               | counter_noticed)
      └────────reject────┴──────────reject──────┘
                          (reason required)

Every public function takes ``(session, notice_id, actor, ...)``, changes the
notice, appends an :class:`~storage.models.AuditEvent` (who, when, what, from
and to states) and flushes; the caller commits. A step the current state does
not allow raises :class:`~notices.errors.IllegalTransition`.

Approval is refused (:class:`~notices.errors.ApprovalRefused`, listing every
gap) unless the reviewer answered each question of the fair-use checklist,
found no fair-use factor applying, a recipient is chosen, the owner's profile
is complete for every part's law, and each part of the rendered notice (the
copyright part, and the trademark part when the notice lists logos) carries
every element its law requires.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy.orm import Session

from notices.business_days import add_business_days
from notices.content import clean_inline
from notices.drafting import (
    OPEN_STATES,
    content_for_notice,
    missing_profile_fields,
    record,
    rerender,
)
from notices.errors import ApprovalRefused, IllegalTransition, NoticeNotFound
from notices.validate import missing_in_parts
from storage.models import Account, AuditEvent, MatchStatus, Notice, NoticeState, utcnow

__all__ = [
    "FAIR_USE_QUESTIONS",
    "REPLIES",
    "RESOLUTIONS",
    "approval_gaps",
    "approve",
    "edit",
    "follow_notice",
    "get_notice",
    "is_draft",
    "mark_sent",
    "parse_answer",
    "record_counter_notice",
    "record_export",
    "record_reply",
    "reject",
    "resolve",
    "submit",
]

FAIR_USE_QUESTIONS: dict[str, str] = {
    "commentary_or_criticism": "Is the use commentary or criticism of the work?",
    "parody": "Is the use a parody of the work?",
    "small_portion": "Does the use take only a small portion of the work?",
    "transformative": "Does the use transform the work (new expression, meaning or purpose)?",
    "none_applies": "Having considered the questions above, are you satisfied that none of them applies?",
}
FACTORS = tuple(k for k in FAIR_USE_QUESTIONS if k != "none_applies")
RESOLUTIONS = ("removed", "still_online", "counter_noticed")
SEND_VIA = ("smtp", "export", "web_form")
# What the host answered a sent notice: removed and refused resolve it (removed /
# still_online); no_answer is recorded and the notice stays sent for the follow-up.
REPLIES = ("removed", "refused", "no_answer")
EXPORT_FORMATS = ("eml", "pdf", "bundle")

# The match statuses a notice sets; moving back to review (or a rejection)
# returns these, and only these, to "new". Any other status (suppressed,
# dismissed) is a decision about the match itself and is left alone.
_FOLLOWED = frozenset({MatchStatus.NOTICE_APPROVED, MatchStatus.NOTICE_SENT, MatchStatus.REMOVED,
                       MatchStatus.STILL_ONLINE, MatchStatus.COUNTER_NOTICED})
_RESOLVED_AS = {"removed": MatchStatus.REMOVED, "still_online": MatchStatus.STILL_ONLINE,
                "counter_noticed": MatchStatus.COUNTER_NOTICED}

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


def get_notice(session: Session, notice_id: int, lock: bool = False) -> Notice:
    notice = session.get(Notice, notice_id, with_for_update=lock or None)
    if notice is None:
        raise NoticeNotFound(f"no notice with id {notice_id}")
    return notice


def _move(session: Session, notice: Notice, actor: str, action: str, to: NoticeState,
          allowed: tuple[NoticeState, ...], now: datetime | None = None, **detail: object) -> None:
    if notice.state not in allowed:
        names = " or ".join(s.value for s in allowed)
        raise IllegalTransition(f"notice {notice.id} is {notice.state.value}; {action} needs it to be {names}")
    before = notice.state
    notice.state = to
    if to not in OPEN_STATES:
        notice.open_key = None
    record(session, notice, actor, action, now, **{"from": before.value, "to": to.value, **detail})
    if to == NoticeState.RESOLVED and "resolution" in detail:
        notice.resolution = str(detail["resolution"])
    follow_notice(session, notice, actor, now)
    session.flush()


def _status_for(notice: Notice, item_online: str, current: MatchStatus) -> MatchStatus:
    state = notice.state
    if item_online == "removed" and state != NoticeState.REJECTED and notice.resolution != "counter_noticed":
        return MatchStatus.REMOVED
    if state == NoticeState.APPROVED:
        return MatchStatus.NOTICE_APPROVED
    if state == NoticeState.SENT:
        return MatchStatus.NOTICE_SENT
    if state == NoticeState.RESOLVED:
        if notice.resolution == "counter_noticed":
            return MatchStatus.COUNTER_NOTICED
        if item_online == "removed" or notice.resolution == "removed":
            return MatchStatus.REMOVED
        return _RESOLVED_AS.get(notice.resolution, MatchStatus.STILL_ONLINE)
    # draft, in review, rejected: back to new, if the notice had moved it
    return MatchStatus.NEW if current in _FOLLOWED else current


def follow_notice(session: Session, notice: Notice, actor: str, now: datetime | None = None) -> None:
    """Move each listed match's status along with its notice, auditing each change.

    approved -> notice_approved, sent -> notice_sent, resolved -> removed /
    still_online / counter_noticed (an item found removed is removed whatever
    the resolution); back in review or rejected -> new again. A match a person
    suppressed or dismissed keeps that status."""
    for item in notice.items:
        match = item.match
        if match is None or match.status in (MatchStatus.SUPPRESSED, MatchStatus.DISMISSED):
            continue
        to = _status_for(notice, item.online, match.status)
        if to == match.status:
            continue
        before = match.status
        match.status = to
        match.status_reason = f"notice {notice.id} {notice.state.value}"
        session.add(AuditEvent(actor=clean_inline(actor, 320) or "unknown", action="status_changed", entity="match",
                               entity_id=match.id, at=now or utcnow(),
                               detail={"from": before.value, "to": to.value, "notice": notice.id}))


def submit(session: Session, notice_id: int, actor: str) -> Notice:
    """draft -> in_review."""
    notice = get_notice(session, notice_id, lock=True)
    _move(session, notice, actor, "submitted", NoticeState.IN_REVIEW, (NoticeState.DRAFT,))
    return notice


def parse_answer(value: object) -> bool | None:
    """yes/no (and true/false, y/n, 1/0) to a bool; anything else is None (unanswered)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "y", "true", "1"):
        return True
    if text in ("no", "n", "false", "0"):
        return False
    return None


def _questions(keys: list[str]) -> str:
    """The questions themselves, quoted, for messages a reviewer reads (not the form keys)."""
    return ", ".join(f"“{FAIR_USE_QUESTIONS[k]}”" for k in keys)


def approval_gaps(session: Session, notice: Notice, fair_use: Mapping[str, object] | None = None) -> list[str]:
    """Everything that stands between the notice and approval (empty: none)."""
    gaps: list[str] = []
    if fair_use is not None:
        answers = {k: parse_answer(fair_use[k]) if k in fair_use else None for k in FAIR_USE_QUESTIONS}
        unknown = sorted(set(fair_use) - set(FAIR_USE_QUESTIONS))
        if unknown:
            gaps.append("fair-use checklist: unknown question(s) " + ", ".join(unknown))
        unanswered = [k for k, v in answers.items() if v is None]
        if unanswered:
            gaps.append("fair-use checklist: answer yes or no to " + _questions(unanswered))
        applying = [k for k in FACTORS if answers[k] is True]
        if applying:
            gaps.append("fair-use checklist: the reviewer answered yes to " + _questions(applying)
                        + "; the use may be fair, and a notice must not be sent for it (reject it instead)")
        elif not unanswered and answers["none_applies"] is not True:
            gaps.append("fair-use checklist: the answer to " + _questions(["none_applies"])
                        + " must be yes when no factor applies")
    if not notice.recipient.strip():
        reason = " (unknown host: choose the recipient)" if "unknown_host" in notice.flags else ""
        gaps.append(f"recipient{reason}")
    parts = content_for_notice(session, notice)
    owner = session.get(Account, notice.owner_id)
    if owner is not None:
        lacking = missing_profile_fields(owner, *(part.law for part in parts))
        if lacking:
            gaps.append("owner profile: " + ", ".join(lacking))
    if not any(part.items for part in parts):
        gaps.append("infringing material: the notice lists no item that is still online")
    gaps += missing_in_parts(parts, text=notice.body_text, html=notice.body_html)
    for item in notice.items:
        if item.online == "removed" and item.url in notice.body_text:
            gaps.append(f"remove {item.url}: it is no longer online")
    return gaps


def approve(session: Session, notice_id: int, actor: str, fair_use: Mapping[str, object],
            now: datetime | None = None) -> Notice:
    """in_review (or draft, which is submitted first) -> approved.

    ``fair_use`` maps every key of FAIR_USE_QUESTIONS to yes/no (bool or
    string). Raises ApprovalRefused listing every gap."""
    notice = get_notice(session, notice_id, lock=True)
    if notice.state not in OPEN_STATES:
        raise IllegalTransition(f"notice {notice.id} is {notice.state.value}; only a draft or a notice in review "
                                "can be approved")
    gaps = approval_gaps(session, notice, fair_use)
    if gaps:
        raise ApprovalRefused(notice.id, gaps)
    if notice.state == NoticeState.DRAFT:
        _move(session, notice, actor, "submitted", NoticeState.IN_REVIEW, (NoticeState.DRAFT,), now)
    at = now or utcnow()
    notice.fair_use = {**{k: parse_answer(fair_use[k]) for k in FAIR_USE_QUESTIONS},
                       "reviewer": clean_inline(actor, 320), "at": at.isoformat()}
    _move(session, notice, actor, "approved", NoticeState.APPROVED, (NoticeState.IN_REVIEW,), now,
          fair_use=dict(notice.fair_use))
    return notice


def reject(session: Session, notice_id: int, actor: str, reason: str) -> Notice:
    """draft, in_review or approved -> rejected, with a reason (required)."""
    reason = reason.strip()
    if not reason:
        raise IllegalTransition("a rejection needs a reason")
    notice = get_notice(session, notice_id, lock=True)
    _move(session, notice, actor, "rejected", NoticeState.REJECTED,
          (NoticeState.DRAFT, NoticeState.IN_REVIEW, NoticeState.APPROVED), reason=reason)
    notice.reject_reason = reason
    return notice


def _diff(name: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{name} (before)", tofile=f"{name} (after)"))


def _html_from_text(text: str) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    body = "\n".join("<p>" + html.escape(p).replace("\n", "<br>\n") + "</p>" for p in paragraphs)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Notice</title></head>\n'
            f"<body>\n{body}\n</body></html>\n")


def edit(session: Session, notice_id: int, actor: str, *, body_text: str | None = None,
         subject: str | None = None, recipient: str | None = None, law: str | None = None) -> Notice:
    """Change the wording, subject, recipient or law of an open notice; keeps a diff.

    An edited text body replaces the HTML body with an escaped rendering of
    the same text, so both variants always say the same thing. Giving a
    recipient (even the drafted one, to confirm it) clears the
    ``unknown_host`` and ``verify_recipient`` flags. The law is the copyright
    law (dmca or dsa, e.g. for a host the directory does not know); changing
    it re-renders the notice unless its text was edited. A trademark part for
    logos is unaffected: it follows from the items, not from the law."""
    notice = get_notice(session, notice_id, lock=True)
    if notice.state not in OPEN_STATES:
        raise IllegalTransition(f"notice {notice.id} is {notice.state.value}; only a draft or a notice in review "
                                "can be edited")
    diffs: dict[str, str] = {}
    if law is not None and law != notice.law:
        if law not in ("dmca", "dsa"):
            raise IllegalTransition(f"law must be dmca or dsa, not {clean_inline(law, 40)!r}")
        diffs["law"] = _diff("law", notice.law, law)
        notice.law = law
        if not notice.edited and body_text is None:
            rerender(session, notice)
    if body_text is not None and body_text != notice.body_text:
        diffs["body_text"] = _diff("body", notice.body_text, body_text)
        notice.body_text = body_text
        notice.body_html = _html_from_text(body_text)
        notice.edited = True
        notice.flags = [f for f in notice.flags if f != "items_added_after_edit"]
    if subject is not None:
        subject = clean_inline(subject, 300)
        if subject != notice.subject:
            diffs["subject"] = _diff("subject", notice.subject, subject)
            notice.subject = subject
    if recipient is not None:
        recipient = recipient.strip()
        if not (_EMAIL.match(recipient) or recipient.startswith("https://")):
            raise IllegalTransition(f"recipient {clean_inline(recipient, 100)!r} is neither an email address "
                                    "nor an https:// web form URL")
        if recipient != notice.recipient:
            diffs["recipient"] = _diff("recipient", notice.recipient, recipient)
            notice.recipient = recipient
        cleared = [f for f in notice.flags if f in ("unknown_host", "verify_recipient")]
        if cleared:
            notice.flags = [f for f in notice.flags if f not in cleared]
            record(session, notice, actor, "recipient_confirmed", recipient=recipient, cleared=cleared)
    if diffs:
        record(session, notice, actor, "edited", state=notice.state.value, diff=diffs)
    session.flush()
    return notice


def mark_sent(session: Session, notice_id: int, actor: str, *, via: str, followup_days: int,
              now: datetime | None = None) -> Notice:
    """approved -> sent (by SMTP, as an export, or through the host's web form)."""
    if via not in SEND_VIA:
        raise IllegalTransition(f"unknown way of sending {via!r}; expected one of {', '.join(SEND_VIA)}")
    notice = get_notice(session, notice_id, lock=True)
    at = now or utcnow()
    _move(session, notice, actor, "sent", NoticeState.SENT, (NoticeState.APPROVED,), now, via=via,
          recipient=notice.recipient)
    notice.sent_at = at
    notice.sent_via = via
    notice.followup_due_at = at + timedelta(days=followup_days)
    return notice


def resolve(session: Session, notice_id: int, actor: str, resolution: str, now: datetime | None = None,
            **detail: object) -> Notice:
    """sent -> resolved as removed, still_online or counter_noticed.

    Content found removed before sending also resolves an approved notice."""
    if resolution not in RESOLUTIONS:
        raise IllegalTransition(f"unknown resolution {resolution!r}; expected one of {', '.join(RESOLUTIONS)}")
    notice = get_notice(session, notice_id, lock=True)
    allowed = (NoticeState.SENT, NoticeState.APPROVED) if resolution == "removed" else (NoticeState.SENT,)
    _move(session, notice, actor, "resolved", NoticeState.RESOLVED, allowed, now, resolution=resolution, **detail)
    notice.resolution = resolution
    return notice


def record_counter_notice(session: Session, notice_id: int, actor: str, received: date,
                          now: datetime | None = None) -> Notice:
    """Record a counter-notice received on ``received``; sets the restore window.

    The host may restore the material from 10 business days after receipt
    (``restore_not_before``) and must by 14 (``restore_deadline``) unless the
    owner files an action first. Allowed once the notice was sent (also after
    it was resolved as removed or still online)."""
    notice = get_notice(session, notice_id, lock=True)
    if notice.state not in (NoticeState.SENT, NoticeState.RESOLVED) or notice.resolution == "counter_noticed":
        raise IllegalTransition(f"notice {notice.id} is {notice.state.value}"
                                f"{' (' + notice.resolution + ')' if notice.resolution else ''}; a counter-notice "
                                "can only be recorded for a sent notice, once")
    if notice.sent_at is not None and received < notice.sent_at.date():
        raise IllegalTransition(f"a counter-notice received on {received} predates the notice "
                                f"(sent {notice.sent_at.date()})")
    earliest = add_business_days(received, 10)
    latest = add_business_days(received, 14)
    before = notice.state
    notice.state = NoticeState.RESOLVED
    notice.resolution = "counter_noticed"
    notice.counter_notice_at = datetime.combine(received, time(0, 0), tzinfo=UTC)
    notice.restore_not_before = datetime.combine(earliest, time(0, 0), tzinfo=UTC)
    notice.restore_deadline = datetime.combine(latest, time(23, 59), tzinfo=UTC)
    record(session, notice, actor, "counter_notice", now, **{"from": before.value, "to": "resolved",
           "received": received.isoformat(), "restore_not_before": earliest.isoformat(),
           "restore_deadline": latest.isoformat()})
    follow_notice(session, notice, actor, now)
    session.flush()
    return notice


def record_reply(session: Session, notice_id: int, actor: str, reply: str, note: str = "",
                 now: datetime | None = None) -> Notice:
    """Record the host's answer to a sent notice.

    ``removed`` resolves it as removed, ``refused`` as still online; ``no_answer``
    is only recorded (the notice stays sent and the follow-up re-checks it)."""
    if reply not in REPLIES:
        raise IllegalTransition(f"unknown reply {reply!r}; expected one of {', '.join(REPLIES)}")
    notice = get_notice(session, notice_id, lock=True)
    if notice.state != NoticeState.SENT:
        raise IllegalTransition(f"notice {notice.id} is {notice.state.value}; a host's reply can only be recorded "
                                "for a sent notice")
    note = clean_inline(note, 1000)
    record(session, notice, actor, "host_replied", now, reply=reply, note=note)
    if reply == "removed":
        resolve(session, notice.id, actor, "removed", now, reply=reply)
    elif reply == "refused":
        resolve(session, notice.id, actor, "still_online", now, reply=reply)
    session.flush()
    return notice


def record_export(session: Session, notice_id: int, actor: str, fmt: str, now: datetime | None = None) -> Notice:
    """Audit an export (.eml, PDF or evidence bundle); a notice not yet approved is exported as a DRAFT."""
    if fmt not in EXPORT_FORMATS:
        raise IllegalTransition(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    notice = get_notice(session, notice_id)
    record(session, notice, actor, "exported", now, format=fmt, state=notice.state.value,
           draft=is_draft(notice))
    session.flush()
    return notice


def is_draft(notice: Notice) -> bool:
    """True until a reviewer approved the notice: its exports are marked DRAFT and cannot be sent."""
    return notice.state in (NoticeState.DRAFT, NoticeState.IN_REVIEW, NoticeState.REJECTED)
