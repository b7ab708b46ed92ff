"""Notices: the reviewers' queue, the notice page with evidence, and the review actions.

Owners may read their own notices; only reviewers and admins act on them.
The actions call :mod:`notices.workflow`, which enforces the state machine,
the fair-use checklist and the required legal elements, and writes the audit log.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Account, AuditEvent, Notice, NoticeState, Role
from webapp.access import is_staff, visible_notice
from webapp.deps import DB, WebContext, csrf_protect, get_ctx, page_user, require_page_role, run_heavy
from webapp.errors import Conflict, Forbidden
from webapp.routes.owner import evidence_view

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])

STAFF = require_page_role(Role.REVIEWER, Role.ADMIN)
OPEN_STATES = (NoticeState.DRAFT, NoticeState.IN_REVIEW)


def fair_use_questions() -> list[tuple[str, str]]:
    from notices.workflow import FAIR_USE_QUESTIONS

    return list(FAIR_USE_QUESTIONS.items())


def _workflow_errors() -> tuple[type[BaseException], ...]:
    try:
        from notices.errors import NoticeError

        return (NoticeError,)
    except ImportError:  # pragma: no cover - notices package not installed
        return ()


def _laws(session: Session, notices: list[Notice]) -> dict[int, list[str]]:
    """The laws of each notice's parts, e.g. ["dmca", "trademark"] (one query)."""
    from notices.drafting import notice_laws

    return notice_laws(session, notices)


def _staff_notice(session: Session, account: Account, notice_id: int) -> Notice:
    notice = visible_notice(session, account, notice_id)
    if not is_staff(account):
        raise Forbidden("only reviewers and admins can act on notices")
    return notice


@router.get("/review", response_class=HTMLResponse)
def queue(request: Request, account: Account = STAFF, session: Session = DB) -> Response:
    from webapp.listing import ListQuery, notice_page
    from webapp.routes.lists import NOTICE_FILTERS

    page = notice_page(session, account, ListQuery.parse(request.query_params, sort="score"), states=OPEN_STATES)
    return get_ctx(request).templates.TemplateResponse(
        request,
        "review.html",
        {
            "page": page,
            "rows": page.rows,
            "laws": _laws(session, [r[0] for r in page.rows]),
            "filters": {"kind": NOTICE_FILTERS["kind"]},
            "shortcuts": True,
        },
    )


@router.get("/notices/{notice_id}", response_class=HTMLResponse)
def notice_page(
    request: Request,
    notice_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    notice = visible_notice(session, account, notice_id)
    flash = get_ctx(request).signer.flash_payload(request.query_params.get("flash", ""))
    if flash.get("n") != notice.id:  # a message is shown only on the notice it was written for
        flash = {}
    given = flash.get("answers")
    answers: dict[str, Any] = given if isinstance(given, dict) else {}
    return _render_notice(
        request,
        session,
        account,
        notice,
        error=str(flash.get("error", "")),
        gaps=[str(g) for g in flash.get("gaps", [])],
        ok=str(flash.get("ok", "")),
        answers={str(k): str(v) for k, v in answers.items()},
    )


# Why a flag is there, in words a reviewer acts on (the flags themselves are keys).
FLAG_HELP = {
    "unknown_host": "This site is not in the host directory, so artwatch does not know who handles its "
    "takedown requests. Choose an entry of the directory or type the address of the site's abuse or "
    "copyright agent (an email address, or the https:// address of its web form).",
    "verify_recipient": "The host directory marks this recipient as one to check before sending: make "
    "sure it is still the site's copyright agent, then confirm it.",
    "url_blocked": "A URL of this notice could not be re-checked: the fetcher refused it (see the history). "
    "Nothing is sent until every URL can be checked.",
    "owner_template_failed": "The owner's own template failed on this notice and the bundled wording was used.",
    "items_added_after_edit": "Matches were added after the text was edited by hand: check the text lists them.",
}


def _directory_choices(ctx: WebContext) -> list[tuple[str, str]]:
    """(key, label) for every host-directory entry with a recipient, for the recipient picker."""
    from notices.errors import HostDirectoryError
    from webapp.routes.admin import effective_host_directory

    try:
        entries = effective_host_directory(ctx.settings).entries.values()
    except (HostDirectoryError, OSError):
        return []
    return sorted(
        ((e.key, f"{e.name}: {e.recipient}") for e in entries if e.recipient), key=lambda c: c[1].lower()
    )


def _render_notice(
    request: Request,
    session: Session,
    account: Account,
    notice: Notice,
    *,
    error: str = "",
    status: int = 200,
    gaps: list[str] | None = None,
    ok: str = "",
    answers: dict[str, str] | None = None,
) -> Response:
    from notices.sending import DRAFT_MARK
    from notices.timeline import notice_timeline
    from notices.workflow import REPLIES, is_draft

    ctx = get_ctx(request)
    evidence = [evidence_view(ctx, item.match) for item in notice.items]
    audit = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.entity == "notice", AuditEvent.entity_id == notice.id)
        .order_by(AuditEvent.at, AuditEvent.id)
    ).all()
    failed = [e for e in audit if e.action == "owner_template_failed"]
    template_failure = (
        str((failed[-1].detail or {}).get("reason", ""))
        if failed and "owner_template_failed" in notice.flags
        else ""
    )
    return ctx.templates.TemplateResponse(
        request,
        "notice.html",
        {
            "notice": notice,
            "laws": _laws(session, [notice])[notice.id],
            "evidence": evidence,
            "audit": audit,
            "error": error,
            "gaps": gaps or [],
            "template_failure": template_failure,
            "can_act": is_staff(account),
            "questions": fair_use_questions(),
            "ok": ok,
            "answers": answers or {},
            "timeline": notice_timeline(session, notice),
            "flag_help": FLAG_HELP,
            "choices": _directory_choices(ctx)
            if is_staff(account) and notice.state in OPEN_STATES
            else [],
            "is_draft": is_draft(notice),
            "draft_mark": DRAFT_MARK,
            "replies": REPLIES,
            "emailable": "@" in notice.recipient and not notice.recipient.startswith("https://"),
        },
        status_code=status,
    )


def _back(request: Request, notice_id: int, **message: Any) -> RedirectResponse:
    """Post/redirect/get: every form answers 303 to the notice page, which shows ``message``
    (ok, or error with gaps and the checklist answers) from a signed token in the URL."""
    url = f"/notices/{notice_id}"
    if message:
        url += "?flash=" + get_ctx(request).signer.flash_token({"n": notice_id, **message})
    return RedirectResponse(url, status_code=303)


def _act(
    request: Request,
    session: Session,
    account: Account,
    notice: Notice,
    action: Any,
    ok: str = "",
    answers: dict[str, str] | None = None,
) -> Response:
    """Run a workflow step; on refusal roll back and show every reason on the notice page."""
    notice_id = notice.id
    try:
        action()
        session.flush()
    except _workflow_errors() as exc:
        session.rollback()
        missing = getattr(exc, "missing", None)
        return _back(
            request,
            notice_id,
            error=str(exc),
            gaps=list(missing) if missing else [],
            answers=answers or {},
        )
    return _back(request, notice_id, ok=ok) if ok else _back(request, notice_id)


@router.post("/notices/{notice_id}/approve")
async def approve(
    request: Request,
    notice_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    from notices import workflow

    notice = _staff_notice(session, account, notice_id)
    form = await request.form()
    # Each question is answered yes or no; an unanswered one stays out, and
    # the workflow refuses approval naming it.
    fair_use = {
        key: str(form[key]) for key, _ in fair_use_questions() if form.get(key) in ("yes", "no")
    }
    return _act(
        request,
        session,
        account,
        notice,
        lambda: workflow.approve(session, notice.id, account.email, fair_use=fair_use),
        ok="Approved. Send it, or export it and submit it by hand, then mark it sent.",
        answers=fair_use,
    )


@router.post("/notices/{notice_id}/reject")
def reject(
    request: Request,
    notice_id: int,
    reason: str = Form(""),
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    from notices import workflow

    notice = _staff_notice(session, account, notice_id)
    if not reason.strip():
        return _back(request, notice.id, error="give a reason for rejecting the notice")
    return _act(
        request,
        session,
        account,
        notice,
        lambda: workflow.reject(session, notice.id, account.email, reason=reason.strip()),
        ok="Rejected.",
    )


@router.post("/notices/{notice_id}/edit")
def edit(
    request: Request,
    notice_id: int,
    subject: str = Form(""),
    body_text: str = Form(""),
    recipient: str = Form(""),
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    from notices import workflow

    notice = _staff_notice(session, account, notice_id)
    changes: dict[str, str] = {}
    if subject and subject != notice.subject:
        changes["subject"] = subject
    if body_text and body_text.replace("\r\n", "\n") != notice.body_text:
        changes["body_text"] = body_text.replace("\r\n", "\n")
    if recipient.strip() and recipient.strip() != notice.recipient:
        changes["recipient"] = recipient.strip()
    if not changes:
        return RedirectResponse(f"/notices/{notice.id}", status_code=303)
    return _act(
        request,
        session,
        account,
        notice,
        lambda: workflow.edit(session, notice.id, account.email, **changes),
        ok="Saved.",
    )


# The HTML body as sent, for the review page's frame: no script, no requests, no
# navigation, even if a stored body predates sanitising; only our page may frame it.
_BODY_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'self'; sandbox"
)


@router.get("/notices/{notice_id}/body.html")
def notice_body_html(
    request: Request,
    notice_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """The HTML variant exactly as it is emailed and bundled (see notices.sanitise.safe_html)."""
    from notices.sanitise import safe_html

    notice = visible_notice(session, account, notice_id)
    return Response(
        safe_html(notice.body_html or ""),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": _BODY_CSP,
            "X-Frame-Options": "SAMEORIGIN",
            "Cache-Control": "no-store",
        },
    )


@router.get("/notices/{notice_id}/evidence.zip")
def evidence_zip(
    request: Request,
    notice_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    from notices.evidence import build_bundle

    notice = visible_notice(session, account, notice_id)
    try:
        data = build_bundle(session, get_ctx(request).blobs, notice.id)
    except _workflow_errors() as exc:
        raise Conflict(f"the evidence bundle cannot be built: {exc}") from None
    from notices.workflow import record_export

    record_export(session, notice.id, account.email, "bundle")
    return Response(
        bytes(data),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="notice-{notice.id}-evidence.zip"'},
    )


@router.post("/notices/{notice_id}/recipient")
def choose_recipient(
    request: Request,
    notice_id: int,
    entry: str = Form(""),
    address: str = Form(""),
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """The recipient picker beside the unknown_host flag: a host-directory entry or a typed address."""
    from notices import workflow

    notice = _staff_notice(session, account, notice_id)
    changes: dict[str, str] = {}
    if address.strip():
        changes["recipient"] = address.strip()
    elif entry:
        from webapp.routes.admin import effective_host_directory

        chosen = effective_host_directory(get_ctx(request).settings).entries.get(entry)
        if chosen is None or not chosen.recipient:
            return _back(request, notice.id, error="choose an entry of the host directory, or type an address")
        changes["recipient"] = chosen.recipient
        if chosen.law in ("dmca", "dsa"):
            changes["law"] = chosen.law
    else:
        return _back(request, notice.id, error="choose an entry of the host directory, or type an address")
    return _act(
        request,
        session,
        account,
        notice,
        lambda: workflow.edit(session, notice.id, account.email, **changes),
        ok=f"The notice will go to {changes['recipient']}.",
    )


def _notice_client(ctx: WebContext) -> Any:
    if ctx.notice_client is not None:
        return ctx.notice_client()
    from crawler.limits import host_limits
    from crawler.service import build_client

    return build_client(ctx.settings.crawler, host_limits(ctx.settings))


def _send(ctx: WebContext, session: Session, notice_id: int, actor: str) -> Any:
    """notices.sending.send_notice, as `artwatch notices send` runs it (re-fetch first, then SMTP)."""
    from notices.sending import send_notice

    with _notice_client(ctx) as client:
        return send_notice(session, ctx.blobs, notice_id, actor, ctx.settings, client)


@router.post("/notices/{notice_id}/send")
async def send(
    request: Request,
    notice_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """Re-check that the content is still online, then email the approved notice.

    The re-fetch and the SMTP exchange run on the heavy-work threads, never on the event loop."""
    ctx = get_ctx(request)
    notice = _staff_notice(session, account, notice_id)
    nid, actor = notice.id, account.email
    try:
        result = await run_heavy(ctx, _send, ctx, session, nid, actor)
    except _workflow_errors() as exc:
        session.rollback()
        return _back(request, nid, error=f"Not sent: {exc}")
    if result.outcome == "sent":
        return _back(request, nid, ok="Sent. The content was re-checked and is still online.")
    if result.outcome == "blocked":  # the record on the notice is committed with the request
        return _back(request, nid, error=f"Not sent: {result.reason}")
    if result.outcome == "all_removed":
        return _back(request, nid, ok="Not sent: the content is already gone; the case is closed as removed.")
    return _back(
        request,
        nid,
        error="Not sent: some content is already gone ("
        + ", ".join(result.removed)
        + "), so the notice went back to review for its text to be checked.",
    )


@router.post("/notices/{notice_id}/mark-sent")
def mark_sent(
    request: Request,
    notice_id: int,
    via: str = Form("web_form"),
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """Record that an approved notice was submitted by hand (the host's web form, or an export)."""
    from notices import workflow

    notice = _staff_notice(session, account, notice_id)
    if via not in ("web_form", "export"):
        return _back(request, notice.id, error="say how the notice was sent: web form or exported file")
    days = get_ctx(request).settings.notices.followup_days
    return _act(
        request,
        session,
        account,
        notice,
        lambda: workflow.mark_sent(session, notice.id, account.email, via=via, followup_days=days),
        ok=f"Recorded as sent. artwatch re-checks the content in {days} days.",
    )


@router.post("/notices/{notice_id}/reply")
def record_reply(
    request: Request,
    notice_id: int,
    reply: str = Form(""),
    note: str = Form(""),
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """The host's answer: removed (resolved as removed), refused (still online) or no answer yet."""
    from notices import workflow

    notice = _staff_notice(session, account, notice_id)
    if reply not in workflow.REPLIES:
        return _back(request, notice.id, error="choose what the host answered")
    return _act(
        request,
        session,
        account,
        notice,
        lambda: workflow.record_reply(session, notice.id, account.email, reply, note),
        ok="Reply recorded.",
    )


@router.post("/notices/{notice_id}/counter")
def record_counter(
    request: Request,
    notice_id: int,
    received: str = Form(""),
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """A counter-notice received on a date: sets the restore window (10 to 14 business days)."""
    from notices import workflow

    notice = _staff_notice(session, account, notice_id)
    try:
        day = date.fromisoformat(received.strip())
    except ValueError:
        return _back(request, notice.id, error="give the date the counter-notice was received (YYYY-MM-DD)")

    def step() -> None:
        n = workflow.record_counter_notice(session, notice.id, account.email, day)
        assert n.restore_not_before is not None and n.restore_deadline is not None

    return _act(
        request,
        session,
        account,
        notice,
        step,
        ok="Counter-notice recorded; the restore window is in the history below.",
    )


@router.get("/notices/{notice_id}/notice.eml")
def export_eml(
    request: Request,
    notice_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """The notice as an email file, evidence attached; before approval it is marked DRAFT and addressed
    to nobody, so it cannot be sent from a mail client by mistake."""
    from notices.sending import export_eml as build
    from notices.workflow import is_draft, record_export

    ctx = get_ctx(request)
    notice = visible_notice(session, account, notice_id)
    try:
        data = build(session, ctx.blobs, notice.id, ctx.settings)
    except _workflow_errors() as exc:
        raise Conflict(f"the notice cannot be exported: {exc}") from None
    name = f"notice-{notice.id}{'-DRAFT' if is_draft(notice) else ''}.eml"
    record_export(session, notice.id, account.email, "eml")
    return Response(
        data,
        media_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/notices/{notice_id}/notice.pdf")
def export_pdf(
    request: Request,
    notice_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    """The notice as a PDF (for web forms that want an upload); watermarked DRAFT before approval."""
    from notices.sending import export_pdf as build
    from notices.workflow import is_draft, record_export

    notice = visible_notice(session, account, notice_id)
    try:
        data = build(session, notice.id)
    except _workflow_errors() as exc:
        raise Conflict(f"the notice cannot be exported: {exc}") from None
    name = f"notice-{notice.id}{'-DRAFT' if is_draft(notice) else ''}.pdf"
    record_export(session, notice.id, account.email, "pdf")
    return Response(
        data,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
