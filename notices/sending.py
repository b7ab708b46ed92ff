"""Sending notices, exporting them, and following up.

Before anything leaves, :func:`send_notice` fetches every infringing URL
again through the injected :class:`httpx.Client` (production passes
``crawler.service.build_client``, which refuses internal addresses) and
proceeds only for content that is still online:

- all of it still online: the email goes out over SMTP with the evidence zip
  attached, and the notice becomes ``sent``;
- all of it gone: nothing is sent and the notice is resolved as ``removed``;
- some of it gone: nothing is sent; the gone items are dropped from the
  notice, which returns to review, because the approved text no longer
  matches what is online;
- the check itself fails (timeout, 5xx): :class:`~notices.errors.RefetchFailed`
  and nothing changes;
- the fetcher refuses a URL (its host now resolves to an internal address):
  nothing is sent, the URL is never contacted, and the notice is flagged
  ``url_blocked`` with the reason in its audit trail, for the reviewer to
  look at; a later check that passes clears the flag.

Sends are rate-limited per host (``sends_per_host_per_hour``, counted from
``notices.sent_at``; 0 disables the limit). :func:`run_followups` re-checks
sent notices once ``followup_days`` have passed and resolves each as
``removed`` or ``still_online``; a notice it cannot check is left as it is
(a refused URL is recorded as above) and the pass goes on with the others.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import NoticeSettings, Settings
from crawler.errors import BlockedAddress, FetchError
from notices.content import as_utc
from notices.drafting import notice_settings, open_key_for, record, rerender
from notices.errors import IllegalTransition, ManualSubmission, RateLimited, RefetchBlocked, RefetchFailed
from notices.evidence import build_bundle
from notices.mail import build_message, safe_header, send_email
from notices.sanitise import safe_html
from notices.workflow import follow_notice, get_notice, is_draft, mark_sent, resolve
from storage.blobs import BlobStore
from storage.models import Account, Notice, NoticeState, utcnow

__all__ = [
    "DRAFT_MARK",
    "FollowupResult",
    "SendResult",
    "build_email",
    "check_online",
    "check_rate_limit",
    "export_eml",
    "export_pdf",
    "run_followups",
    "send_notice",
]

log = logging.getLogger(__name__)

DRAFT_MARK = "DRAFT - NOT APPROVED, DO NOT SEND"
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_GONE = {404, 410, 451}


def check_online(client: httpx.Client, url: str) -> str:
    """``"online"`` or ``"removed"``; RefetchFailed when it cannot be told.

    Removed means 404, 410 or 451, or a redirect to a "removed" placeholder
    (as some image hosts do). Only the headers are read. RefetchBlocked when
    the client's fetcher refuses the URL or a redirect hop (internal address,
    odd scheme); other refusals of the crawler's transport (robots.txt, its
    rate limit) are failures to tell."""
    from crawler.fetch import deadline, total_budget

    try:
        # One deadline for the whole exchange: a server dripping header lines
        # cannot hold a send or the follow-up pass (crawler.fetch.deadline).
        with deadline(total_budget(client)), client.stream("GET", url) as response:
            status = response.status_code
            final = str(response.url)
    except BlockedAddress as exc:
        raise RefetchBlocked(f"the fetcher refused to re-fetch {url}: {exc}", url) from None
    except (httpx.HTTPError, FetchError) as exc:
        raise RefetchFailed(f"could not re-fetch {url} to confirm it is still online: "
                            f"{type(exc).__name__}: {exc}") from None
    if status in _GONE or (final != url and re.search(r"/(removed|deleted|not[_-]?found)\b", final, re.IGNORECASE)):
        return "removed"
    if 200 <= status < 300:
        return "online"
    raise RefetchFailed(f"could not confirm {url} is still online: it answered HTTP {status}")


def check_rate_limit(session: Session, host: str, limit: int, now: datetime) -> None:
    """Raise RateLimited when ``limit`` notices went to ``host`` in the past hour."""
    if limit <= 0:
        return
    since = now - timedelta(hours=1)
    sent = session.scalar(select(func.count(Notice.id)).where(Notice.host == host, Notice.sent_at >= since)) or 0
    if sent >= limit:
        oldest = session.scalar(select(func.min(Notice.sent_at)).where(Notice.host == host,
                                                                        Notice.sent_at >= since))
        raise RateLimited(host, limit, as_utc(oldest or now) + timedelta(hours=1))


def build_email(session: Session, blobs: BlobStore, notice_id: int,
                settings: Settings | NoticeSettings) -> EmailMessage:
    """The notice as an email: text + HTML, evidence zip attached, replies to the owner."""
    ns = notice_settings(settings)
    notice = get_notice(session, notice_id)
    owner = session.get(Account, notice.owner_id)
    bundle = build_bundle(session, blobs, notice.id)
    draft = is_draft(notice)
    to = notice.recipient if _EMAIL.match(notice.recipient) and not draft else "undisclosed-recipients:;"
    subject, text, body_html = notice.subject, notice.body_text, safe_html(notice.body_html)
    if draft:  # marked on every part, and addressed to nobody: it cannot go out by mistake
        subject = f"[{DRAFT_MARK}] {subject}"
        text = f"{DRAFT_MARK}\n\n{text}"
        mark = f"<p><strong>{DRAFT_MARK}</strong></p>"
        body_html = (re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + mark, body_html, count=1)
                     if "<body" in body_html else mark + body_html)
    msg = build_message(
        ns, to, safe_header(subject), text, html=body_html,
        attachments=[(f"evidence-notice-{notice.id}.zip", bundle, "application/zip")],
        reply_to=owner.email if owner is not None else None,
        cc=owner.email if owner is not None else None,
    )
    msg["X-Artwatch-Notice"] = str(notice.id)
    if draft:
        msg["X-Artwatch-Draft"] = "not approved; do not send"
    return msg


def export_eml(session: Session, blobs: BlobStore, notice_id: int, settings: Settings | NoticeSettings) -> bytes:
    return build_email(session, blobs, notice_id, settings).as_bytes(policy=SMTP)


_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def export_pdf(session: Session, notice_id: int) -> bytes:
    """The notice as a PDF (for web forms that want an upload, or for print)."""
    from fpdf import FPDF

    notice = get_notice(session, notice_id)
    draft = is_draft(notice)

    class _Pdf(FPDF):
        def header(self) -> None:
            """On a draft, every page carries a large diagonal DRAFT and a banner."""
            if not draft:
                return
            family, size = self.font_family, self.font_size_pt
            self.set_font("Helvetica", "B", 96)
            self.set_text_color(235, 160, 160)
            with self.rotation(45, self.w / 2, self.h / 2):
                self.text(self.w / 2 - 75, self.h / 2 + 12, "DRAFT")
            self.set_font("Helvetica", "B", 11)
            self.set_text_color(170, 0, 0)
            self.cell(0, 8, DRAFT_MARK, align="C", new_x="LMARGIN", new_y="NEXT")
            self.set_text_color(0, 0, 0)
            if family:
                self.set_font(family, size=size)

    pdf = _Pdf(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(safe_header((f"[{DRAFT_MARK}] " if draft else "") + notice.subject, 200))
    if draft:
        pdf.set_keywords("DRAFT")
    pdf.set_creator("artwatch")
    if _FONT.exists():
        pdf.add_font("body", "", str(_FONT))
        family = "body"

        def fit(text: str) -> str:
            return text
    else:  # pragma: no cover - depends on the machine's fonts
        family = "Helvetica"

        def fit(text: str) -> str:
            return text.encode("latin-1", "replace").decode("latin-1")
    pdf.add_page()
    pdf.set_font(family, size=13)
    pdf.multi_cell(0, 7, fit(safe_header(notice.subject)), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font(family, size=10)
    for line in notice.body_text.splitlines() or [""]:
        pdf.multi_cell(0, 5, fit(line) or " ", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


@dataclass
class SendResult:
    notice_id: int
    outcome: str  # "sent", "all_removed", "returned_to_review" or "blocked"
    removed: list[str] = field(default_factory=list)
    reason: str = ""  # for "blocked": why, as recorded on the notice


def _recheck(session: Session, client: httpx.Client, notice: Notice, now: datetime) -> list[str]:
    removed = []
    for item in notice.items:
        if item.online == "removed":
            continue
        item.online = check_online(client, item.url)
        item.checked_at = now
        if item.online == "removed":
            removed.append(item.url)
    if "url_blocked" in notice.flags:  # every URL could be checked again
        notice.flags = [f for f in notice.flags if f != "url_blocked"]
    session.flush()
    return removed


def _record_blocked(session: Session, notice: Notice, actor: str, exc: RefetchBlocked, now: datetime) -> None:
    """Flag the notice and mark the item, so the reviewer sees why it cannot be checked."""
    for item in notice.items:
        if item.url == exc.url:
            item.online = "blocked"
            item.checked_at = now
    if "url_blocked" not in notice.flags:
        notice.flags = [*notice.flags, "url_blocked"]
    record(session, notice, actor, "refetch_blocked", now, url=exc.url, reason=str(exc))
    session.flush()


def send_notice(session: Session, blobs: BlobStore, notice_id: int, actor: str,
                settings: Settings | NoticeSettings, client: httpx.Client, now: datetime | None = None) -> SendResult:
    """Re-check, then send an approved notice over SMTP (see the module docstring).

    Raises IllegalTransition (not approved), ManualSubmission (recipient is a
    web form), RateLimited, RefetchFailed, MailError; all of them leave the
    notice unchanged. A refused URL is the outcome ``"blocked"`` instead, whose
    record on the notice the caller must commit."""
    ns = notice_settings(settings)
    now = now or utcnow()
    notice = get_notice(session, notice_id, lock=True)
    if notice.state != NoticeState.APPROVED:
        raise IllegalTransition(f"notice {notice.id} is {notice.state.value}; only an approved notice can be sent")
    if not _EMAIL.match(notice.recipient):
        raise ManualSubmission(
            f"notice {notice.id} goes to a web form ({notice.recipient}); export it (artwatch notices export "
            f"{notice.id} --pdf FILE --bundle FILE), submit it there, then run artwatch notices mark-sent {notice.id}")
    check_rate_limit(session, notice.host, ns.sends_per_host_per_hour, now)
    try:
        removed = _recheck(session, client, notice, now)
    except RefetchBlocked as exc:
        _record_blocked(session, notice, actor, exc, now)
        return SendResult(notice.id, "blocked", reason=str(exc))
    if removed:
        if all(item.online == "removed" for item in notice.items):
            resolve(session, notice.id, actor, "removed", now, note="content removed before the notice was sent",
                    removed=removed)
            return SendResult(notice.id, "all_removed", removed)
        _return_to_review(session, notice, actor, removed, now)
        return SendResult(notice.id, "returned_to_review", removed)
    message = build_email(session, blobs, notice.id, ns)
    send_email(ns, message)
    mark_sent(session, notice.id, actor, via="smtp", followup_days=ns.followup_days, now=now)
    return SendResult(notice.id, "sent")


def _return_to_review(session: Session, notice: Notice, actor: str, removed: list[str], now: datetime) -> None:
    key = open_key_for(notice.owner_id, notice.host)
    taken = session.scalar(select(Notice.id).where(Notice.open_key == key, Notice.id != notice.id))
    notice.state = NoticeState.IN_REVIEW
    notice.open_key = None if taken is not None else key
    if not notice.edited:
        rerender(session, notice)
    record(session, notice, actor, "returned_to_review", now, **{
        "from": "approved", "to": "in_review", "removed": removed,
        "reason": "some content was already removed; the approved text no longer matches what is online"})
    follow_notice(session, notice, actor, now)
    session.flush()


@dataclass
class FollowupResult:
    notice_id: int
    outcome: str  # "removed", "still_online", "check_failed" or "check_blocked"
    still_online: list[str] = field(default_factory=list)
    error: str = ""


def run_followups(session: Session, client: httpx.Client, settings: Settings | NoticeSettings,
                  actor: str = "artwatch-followup", now: datetime | None = None) -> list[FollowupResult]:
    """Re-check every sent notice whose follow-up is due and resolve it.

    A notice whose check fails (timeout, 5xx) stays sent and is tried again on
    the next run; one with a URL the fetcher refuses also stays sent, and is
    flagged ``url_blocked`` with the reason the first time."""
    now = now or utcnow()
    due = list(session.scalars(select(Notice).where(Notice.state == NoticeState.SENT,
                                                    Notice.followup_due_at <= now).order_by(Notice.id)))
    results = []
    for notice in due:
        try:
            with session.begin_nested():
                _recheck(session, client, notice, now)
        except RefetchBlocked as exc:
            if "url_blocked" not in notice.flags:  # a pass every few hours must not repeat it
                _record_blocked(session, notice, actor, exc, now)
            results.append(FollowupResult(notice.id, "check_blocked", error=str(exc)))
            continue
        except RefetchFailed as exc:
            results.append(FollowupResult(notice.id, "check_failed", error=str(exc)))
            continue
        online = [i.url for i in notice.items if i.online == "online"]
        outcome = "still_online" if online else "removed"
        resolve(session, notice.id, actor, outcome, now, still_online=online, checked=len(notice.items))
        results.append(FollowupResult(notice.id, outcome, online))
    return results
