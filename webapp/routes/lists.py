"""List pages (matches, notices, works, uploads), their CSV exports, and match triage.

Every list reads a :class:`webapp.listing.ListQuery` from the query string and
shows one page of rows fetched in SQL. Triage forms post one decision for one
match or for the checked rows, then redirect back to the list they came from
(post/redirect/get), with a short summary in the query string.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from storage.models import Account, MatchStatus, NoticeState, Role, Upload, UploadStatus, WorkKind
from webapp import listing, triage
from webapp.access import visible_match
from webapp.deps import DB, csrf_protect, get_ctx, page_user, require_page_role
from webapp.errors import NotFound
from webapp.listing import ListQuery

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])

#: Uploads belong to no owner (one crawled image may match several owners' works): staff only.
STAFF = require_page_role(Role.REVIEWER, Role.ADMIN)

MATCH_FILTERS = {
    "status": [("", "needs a look"), ("all", "all"), *((s.value, s.value) for s in MatchStatus)],
    "kind": [("", "any kind"), *((k.value, k.value) for k in WorkKind)],
}
NOTICE_FILTERS = {
    "status": [("", "any state"), *((s.value, s.value.replace("_", " ")) for s in NoticeState)],
    "kind": [("", "any law"), ("dmca", "dmca"), ("dsa", "dsa"), ("trademark", "trademark")],
}
UPLOAD_FILTERS = {"status": [("", "any status"), *((s.value, s.value) for s in UploadStatus)]}
WORK_FILTERS = {"kind": [("", "any kind"), *((k.value, k.value) for k in WorkKind)]}


def _laws(session: Session, notices: list[Any]) -> dict[int, list[str]]:
    from notices.drafting import notice_laws

    return notice_laws(session, notices)


@router.get("/matches", response_class=HTMLResponse)
def matches_page(request: Request, account: Account = Depends(page_user), session: Session = DB) -> Response:
    lq = ListQuery.parse(request.query_params, sort="score")
    page = listing.match_page(session, account, lq)
    return get_ctx(request).templates.TemplateResponse(
        request,
        "matches.html",
        {
            "page": page,
            "matches": page.rows,
            "filters": MATCH_FILTERS,
            "decisions": triage.DECISIONS,
            "triage": True,
            "back": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            "summary": triage.summary(request.query_params),
        },
    )


@router.get("/matches.csv")
def matches_csv(request: Request, account: Account = Depends(page_user)) -> Response:
    lq = ListQuery.parse(request.query_params, sort="score")
    return _csv(request, "matches.csv", listing.MATCH_CSV, lambda s: listing.match_csv_rows(s, account, lq))


@router.get("/notices", response_class=HTMLResponse)
def notices_page(request: Request, account: Account = Depends(page_user), session: Session = DB) -> Response:
    lq = ListQuery.parse(request.query_params, sort="date")
    page = listing.notice_page(session, account, lq)
    return get_ctx(request).templates.TemplateResponse(
        request,
        "notices.html",
        {
            "page": page,
            "rows": page.rows,
            "laws": _laws(session, [r[0] for r in page.rows]),
            "filters": NOTICE_FILTERS,
        },
    )


@router.get("/notices.csv")
def notices_csv(request: Request, account: Account = Depends(page_user)) -> Response:
    lq = ListQuery.parse(request.query_params, sort="date")
    return _csv(request, "notices.csv", listing.NOTICE_CSV, lambda s: listing.notice_csv_rows(s, account, lq))


def _csv(request: Request, name: str, header: tuple[str, ...], rows: Any) -> Response:
    """Stream a CSV from its own session, so the export outlives the request's session."""
    sessions = get_ctx(request).sessions

    def body() -> Any:
        with sessions() as s:
            yield from listing.csv_lines(header, rows(s))

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@router.get("/works", response_class=HTMLResponse)
def works_page(request: Request, account: Account = Depends(page_user), session: Session = DB) -> Response:
    lq = ListQuery.parse(request.query_params, sort="date")
    page = listing.work_page(session, account.id, lq)
    return get_ctx(request).templates.TemplateResponse(
        request, "works.html", {"page": page, "rows": page.rows, "filters": WORK_FILTERS}
    )


@router.get("/uploads", response_class=HTMLResponse)
def uploads_page(request: Request, account: Account = STAFF, session: Session = DB) -> Response:
    lq = ListQuery.parse(request.query_params, sort="date")
    page = listing.upload_page(session, lq)
    return get_ctx(request).templates.TemplateResponse(
        request, "uploads.html", {"page": page, "rows": page.rows, "filters": UPLOAD_FILTERS}
    )


@router.get("/uploads/{upload_id}/image")
def upload_image(
    request: Request, upload_id: int, thumb: int = 0, account: Account = STAFF, session: Session = DB
) -> Response:
    from webapp.routes.owner import blob_response

    upload = session.get(Upload, upload_id)
    if upload is None:
        raise NotFound(f"no upload with id {upload_id}")
    return blob_response(get_ctx(request), upload.blob_sha256, thumb=bool(thumb))


def _back(next_url: str, default: str) -> str:
    """Only a path on this site (never //host or a scheme) is a place to return to."""
    if next_url.startswith("/") and not next_url.startswith("//") and "\\" not in next_url and len(next_url) < 2000:
        return next_url
    return default


def _after(next_url: str, decision: str, out: triage.Outcome) -> RedirectResponse:
    base = next_url.split("#", 1)[0]
    keep = [
        kv for kv in (base.split("?", 1)[1].split("&") if "?" in base else [])
        if kv.split("=", 1)[0] not in ("done", "decision", "drafted", "swept", "blocked")
    ]
    info: dict[str, Any] = {"done": len(out.decided), "decision": decision, "drafted": len(out.drafted),
            "swept": len(out.suppressed)}
    if out.blocked:
        info["blocked"] = "profile" if out.blocked_profile else "other"
    query = "&".join([*keep, urlencode(info)])
    return RedirectResponse(f"{base.split('?', 1)[0]}?{query}", status_code=303)


@router.post("/matches/decide")
async def decide_many(request: Request, account: Account = Depends(page_user), session: Session = DB) -> Response:
    form = await request.form()
    ids = [int(v) for v in form.getlist("ids") if isinstance(v, str) and v.isdigit()]
    decision = str(form.get("decision", ""))
    out = triage.decide(session, account, ids, decision, get_ctx(request).settings)
    return _after(_back(str(form.get("next", "")), "/matches"), decision, out)


@router.post("/matches/{match_id}/decide")
def decide_one(
    request: Request,
    match_id: int,
    decision: str = Form(""),
    next: str = Form(""),
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    match = visible_match(session, account, match_id)
    out = triage.decide(session, account, [match.id], decision, get_ctx(request).settings)
    return _after(_back(next, f"/matches/{match.id}"), decision, out)
