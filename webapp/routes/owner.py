"""Owner pages: works, registration and import, matches with evidence, profile and alerts."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from notices.images import image_size, media_type, thumbnail_png
from storage.blobs import BlobNotFound
from storage.models import Account, Match, Role
from webapp import evidence_text
from webapp.access import is_staff, visible_job, visible_match, visible_work
from webapp.deps import (
    DB,
    csrf_protect,
    get_ctx,
    page_user,
    read_upload,
    require_page_role,
    run_heavy,
)
from webapp.errors import InvalidInput, NotFound, WebError
from webapp.security import issue_api_token
from webapp.triage import DECISIONS, summary
from webapp.works import WorkForm, edit, parse_licensed, register, remove, spool_uploads, start_import

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])

OWNER = require_page_role(Role.OWNER)
ALERT_MODES = ("instant", "digest", "off")


#: Side of the list thumbnails (``?thumb=1`` on the image routes), in pixels.
THUMB_BOX = 96


def blob_response(ctx: Any, sha: str | None, *, thumb: bool = False) -> Response:
    """Serve a stored image. SVG is sandboxed so a hostile file cannot run script on our origin.

    ``thumb`` serves a small PNG for lists instead (the original when it cannot be made).
    """
    if not sha:
        raise NotFound("no image stored")
    try:
        data = ctx.blobs.get(sha)
    except BlobNotFound:
        raise NotFound("the image is no longer stored") from None
    if thumb:
        data = thumbnail_png(data, box=THUMB_BOX) or data
    return Response(
        data,
        media_type=media_type(data),
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            "Cache-Control": "private, max-age=3600",
            "Content-Disposition": "inline",
        },
    )


def evidence_view(ctx: Any, match: Match) -> dict[str, Any]:
    """What a page needs to draw a match: sizes for the overlay, the polygon, the capture."""
    upload = match.upload
    size = None
    if upload.blob_sha256:
        try:
            size = image_size(ctx.blobs.get(upload.blob_sha256))
        except BlobNotFound:
            size = None
    region = match.region if size and match.region else None
    return {
        "match": match,
        "upload": upload,
        "work": match.work,
        "size": size,
        "region": region,
        "reason": evidence_text.reason(
            match.signals,
            match.region,
            size,
            kind=match.work.kind.value,
            colour=_colour(ctx, match, size) if region else None,
        ),
    }


def _colour(ctx: Any, match: Match, size: tuple[int, int] | None) -> str | None:
    """Whether the copy's colours differ from the work's (None when it cannot be told)."""
    from notices.images import rgba_pixels

    if size is None or not match.upload.blob_sha256 or not match.region:
        return None
    try:
        upload = rgba_pixels(ctx.blobs.get(match.upload.blob_sha256))
        work = rgba_pixels(ctx.blobs.get(match.work.blob_sha256), box=256)
    except BlobNotFound:
        return None
    if upload is None or work is None:
        return None
    k = upload.shape[1] / float(size[0])
    region = [[float(x) * k, float(y) * k] for x, y in match.region]
    try:
        return evidence_text.colour_change(work, upload[:, :, :3], region)
    except Exception:  # noqa: BLE001 - a display helper never fails the page
        return None


@router.get("/works/new", response_class=HTMLResponse)
def new_work_page(request: Request, account: Account = OWNER) -> Response:
    return get_ctx(request).templates.TemplateResponse(
        request, "work_new.html", {"error": "", "form": {}}
    )


@router.post("/works")
async def create_work(
    request: Request,
    account: Account = OWNER,
    session: Session = DB,
    file: UploadFile | None = File(None),
    title: str = Form(""),
    kind: str = Form("logo"),
    registration_number: str = Form(""),
    licensed_sites: str = Form(""),
) -> Response:
    ctx = get_ctx(request)
    form = {
        "title": title,
        "kind": kind,
        "registration_number": registration_number,
        "licensed_sites": licensed_sites,
    }
    try:
        data = await read_upload(request, file)
        work = await run_heavy(
            ctx,
            register,
            ctx,
            session,
            account.id,
            data,
            (file.filename or "") if file else "",
            WorkForm(title, kind, registration_number, parse_licensed(licensed_sites)),
        )
    except WebError as exc:
        session.rollback()
        return ctx.templates.TemplateResponse(
            request, "work_new.html", {"error": exc.detail, "form": form}, status_code=exc.status
        )
    return RedirectResponse(f"/works/{work.id}?created=1", status_code=303)


@router.get("/works/import", response_class=HTMLResponse)
def import_page(request: Request, account: Account = OWNER) -> Response:
    return get_ctx(request).templates.TemplateResponse(request, "work_import.html", {"error": ""})


@router.post("/works/import")
async def import_works(
    request: Request,
    account: Account = OWNER,
    session: Session = DB,
    files: list[UploadFile] = File(default_factory=list),
    kind: str = Form("artwork"),
    licensed_sites: str = Form(""),
) -> Response:
    ctx = get_ctx(request)
    try:
        sites = parse_licensed(licensed_sites)
        spool, items = await run_heavy(
            ctx, spool_uploads, files, ctx.max_upload_bytes, ctx.settings.data_dir / "spool"
        )
        try:
            job = start_import(ctx, session, account.id, items, kind, sites, spool=spool)
        except BaseException:
            shutil.rmtree(spool, ignore_errors=True)
            raise
    except WebError as exc:
        return ctx.templates.TemplateResponse(
            request, "work_import.html", {"error": exc.detail}, status_code=exc.status
        )
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    job_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    job = visible_job(session, account, job_id)
    return get_ctx(request).templates.TemplateResponse(request, "job.html", _job_context(job))


def _job_context(job: Any) -> dict[str, Any]:
    from registry.backscan import KIND, progress

    return {"job": job, "scan": progress(job) if job.kind == KIND else None}


@router.get("/jobs/{job_id}/progress", response_class=HTMLResponse)
def job_progress(
    request: Request,
    job_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    job = visible_job(session, account, job_id)
    return get_ctx(request).templates.TemplateResponse(request, "_job_progress.html", _job_context(job))


@router.get("/works/{work_id}", response_class=HTMLResponse)
def work_page(
    request: Request,
    work_id: int,
    created: int = 0,
    updated: int = 0,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    from registry.backscan import jobs_for_work
    from storage.models import WebJob
    from webapp.listing import ListQuery, match_page
    from webapp.routes.lists import MATCH_FILTERS

    work = visible_work(session, account, work_id)
    page = match_page(session, account, ListQuery.parse(request.query_params, sort="score"), work_id=work.id)
    scans = jobs_for_work(session, work, limit=20)
    job = session.get(WebJob, scans[0].job_id) if scans else None
    return get_ctx(request).templates.TemplateResponse(
        request,
        "work.html",
        {
            "work": work,
            "matches": page.rows,
            "page": page,
            "filters": {"status": [("", "all"), *MATCH_FILTERS["status"][2:]]},
            "created": bool(created),
            "updated": bool(updated),
            "job": job,
            "scan": scans[0] if scans else None,
            "can_edit": work.owner_id == account.id or is_staff(account),
            "decisions": DECISIONS,
            "triage": True,
            "back": f"/works/{work.id}" + (f"?{request.url.query}" if request.url.query else ""),
            "summary": summary(request.query_params),
        },
    )


def _editable_work(session: Session, account: Account, work_id: int) -> Any:
    work = visible_work(session, account, work_id)
    if work.owner_id != account.id and not is_staff(account):
        raise NotFound(f"no work with id {work_id}")
    return work


@router.get("/works/{work_id}/edit", response_class=HTMLResponse)
def edit_work_page(
    request: Request,
    work_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    work = _editable_work(session, account, work_id)
    form = {"title": work.title, "kind": work.kind.value, "licensed_sites": "\n".join(work.licensed_sites or [])}
    return get_ctx(request).templates.TemplateResponse(
        request, "work_edit.html", {"work": work, "error": "", "form": form})


@router.post("/works/{work_id}/edit")
async def edit_work(
    request: Request,
    work_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
    title: str = Form(""),
    kind: str = Form(""),
    licensed_sites: str = Form(""),
) -> Response:
    ctx = get_ctx(request)
    work = _editable_work(session, account, work_id)
    form = {"title": title, "kind": kind, "licensed_sites": licensed_sites}
    try:
        await run_heavy(ctx, edit, ctx, session, work,
                        WorkForm(title, kind, work.registration_number, parse_licensed(licensed_sites)),
                        account.email)
    except WebError as exc:
        session.rollback()
        return ctx.templates.TemplateResponse(
            request, "work_edit.html", {"work": work, "error": exc.detail, "form": form}, status_code=exc.status)
    return RedirectResponse(f"/works/{work.id}?updated=1", status_code=303)


@router.get("/works/{work_id}/image")
def work_image(
    request: Request,
    work_id: int,
    thumb: int = 0,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    work = visible_work(session, account, work_id)
    return blob_response(get_ctx(request), work.blob_sha256, thumb=bool(thumb))


@router.post("/works/{work_id}/delete")
def delete_work(
    request: Request,
    work_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    work = visible_work(session, account, work_id)
    if work.owner_id != account.id:
        raise NotFound(f"no work with id {work_id}")
    remove(get_ctx(request), session, work)
    return RedirectResponse("/works", status_code=303)


@router.get("/matches/{match_id}", response_class=HTMLResponse)
def match_page(
    request: Request,
    match_id: int,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    ctx = get_ctx(request)
    match = visible_match(session, account, match_id)
    from notices.timeline import match_timeline
    from storage.models import NoticeItem

    notice_ids = session.scalars(
        select(NoticeItem.notice_id).where(NoticeItem.match_id == match.id)
    ).all()
    return ctx.templates.TemplateResponse(
        request,
        "match.html",
        {
            "ev": evidence_view(ctx, match),
            "notice_ids": sorted(set(notice_ids)),
            "timeline": match_timeline(session, match),
            "decisions": DECISIONS,
            "summary": summary(request.query_params),
        },
    )


@router.get("/matches/{match_id}/image")
def match_image(
    request: Request,
    match_id: int,
    thumb: int = 0,
    account: Account = Depends(page_user),
    session: Session = DB,
) -> Response:
    match = visible_match(session, account, match_id)
    return blob_response(get_ctx(request), match.upload.blob_sha256, thumb=bool(thumb))


@router.get("/profile", response_class=HTMLResponse)
def profile_page(request: Request, account: Account = Depends(page_user)) -> Response:
    return get_ctx(request).templates.TemplateResponse(
        request,
        "profile.html",
        {"account": account, "saved": False, "new_token": "", "modes": ALERT_MODES},
    )


@router.post("/profile", response_class=HTMLResponse)
def save_profile(
    request: Request,
    account: Account = Depends(page_user),
    session: Session = DB,
    display_name: str = Form(""),
    legal_name: str = Form(""),
    postal_address: str = Form(""),
    phone: str = Form(""),
    alert_mode: str = Form("instant"),
) -> Response:
    if alert_mode not in ALERT_MODES:
        raise InvalidInput(f"alert mode must be one of {', '.join(ALERT_MODES)}")
    account.display_name = display_name.strip()[:200]
    account.legal_name = legal_name.strip()[:200]
    account.postal_address = postal_address.strip()[:2000]
    account.phone = phone.strip()[:64]
    account.alert_mode = alert_mode
    return get_ctx(request).templates.TemplateResponse(
        request,
        "profile.html",
        {"account": account, "saved": True, "new_token": "", "modes": ALERT_MODES},
    )


@router.post("/profile/token", response_class=HTMLResponse)
def new_token(request: Request, account: Account = Depends(page_user)) -> Response:
    token = issue_api_token(account)
    return get_ctx(request).templates.TemplateResponse(
        request,
        "profile.html",
        {"account": account, "saved": False, "new_token": token, "modes": ALERT_MODES},
    )
