"""Notices: the reviewers' queue, the notice page with evidence, and the review actions.

Owners may read their own notices; only reviewers and admins act on them.
The actions call :mod:`notices.workflow`, which enforces the state machine,
the fair-use checklist and the required legal elements, and writes the audit log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Account, AuditEvent, Notice, NoticeState, Role
from webapp.access import is_staff, visible_notice
from webapp.deps import DB, csrf_protect, get_ctx, page_user, require_page_role
from webapp.errors import Conflict, Forbidden, InvalidInput
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
    return _render_notice(request, session, account, notice)


def _render_notice(
    request: Request,
    session: Session,
    account: Account,
    notice: Notice,
    *,
    error: str = "",
    status: int = 200,
    gaps: list[str] | None = None,
) -> Response:
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
        },
        status_code=status,
    )


def _act(
    request: Request, session: Session, account: Account, notice: Notice, action: Any
) -> Response:
    """Run a workflow step; on refusal re-render the notice with every reason."""
    try:
        action()
        session.flush()
    except _workflow_errors() as exc:
        session.rollback()
        notice = visible_notice(session, account, notice.id)
        missing = getattr(exc, "missing", None)
        return _render_notice(
            request,
            session,
            account,
            notice,
            error=str(exc),
            status=409,
            gaps=list(missing) if missing else [],
        )
    return RedirectResponse(f"/notices/{notice.id}", status_code=303)


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
        raise InvalidInput("give a reason for rejecting the notice")
    return _act(
        request,
        session,
        account,
        notice,
        lambda: workflow.reject(session, notice.id, account.email, reason=reason.strip()),
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
    return Response(
        bytes(data),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="notice-{notice.id}-evidence.zip"'},
    )
