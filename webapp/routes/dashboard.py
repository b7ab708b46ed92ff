"""The dashboard (where everyone lands after login), "crawl now", and the favicon."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from storage.models import Account, AuditEvent, Role, Source
from webapp.deps import DB, csrf_protect, get_ctx, page_user, require_page_role
from webapp.errors import NotFound

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])

STAFF = require_page_role(Role.REVIEWER, Role.ADMIN)


def _dashboard_page(request: Request, account: Account, session: Session, *, queued: Source | None = None,
                    failed: str = "", status: int = 200) -> Response:
    from webapp.dashboard import bar_chart_svg, build_dashboard, hbar_chart_svg, worker_health

    ctx = get_ctx(request)
    staff = account.role in (Role.REVIEWER, Role.ADMIN)
    board = build_dashboard(session, None if staff else account.id)
    context: dict[str, Any] = {
        "board": board,
        "staff": staff,
        "matches_chart": bar_chart_svg("Matches per day", board.days, board.matches_per_day, "matches"),
        "removals_chart": bar_chart_svg("Removals per day", board.days, board.removals_per_day, "removals"),
        "sites_chart": hbar_chart_svg("Matches by site", board.matches_by_site),
        "queued": queued.name if queued is not None and staff else "",
        "failed": failed,
    }
    if staff:
        from crawler.health import source_health

        context["sources"] = source_health(session)
        context["health"] = worker_health(ctx.settings)
    return ctx.templates.TemplateResponse(request, "dashboard.html", context, status_code=status)


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(
    request: Request, queued: int = 0, account: Account = Depends(page_user), session: Session = DB
) -> Response:
    # ``queued`` is a source id (after "crawl now"), so a link cannot put words on the page.
    return _dashboard_page(request, account, session, queued=session.get(Source, queued) if queued else None)


@router.post("/admin/sources/{source_id}/crawl", response_class=HTMLResponse)
def crawl_now(request: Request, source_id: int, account: Account = STAFF, session: Session = DB) -> Response:
    """Queue ``crawl_source`` for one source now (a worker polls it from its cursor)."""
    source = session.get(Source, source_id)
    if source is None:
        raise NotFound("no such source")
    settings = get_ctx(request).settings
    try:
        from registry.root import queue_task

        # One bounded attempt at the broker, not the publisher's retries.
        queue_task(settings, "artwatch.crawl_source", source.id, bounded=True)
    except Exception as exc:  # noqa: BLE001 - the broker's error is shown to the person who asked
        return _dashboard_page(request, account, session, failed=f"{source.name}: {type(exc).__name__}: {exc}",
                               status=503)
    session.add(AuditEvent(actor=account.email, action="crawl_now", entity="source", entity_id=source.id,
                           detail={"name": source.name}))
    return RedirectResponse(f"/dashboard?queued={source.id}#sources", status_code=303)


@router.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for /favicon.ico where no page links an icon (JSON, images): send them to the SVG."""
    return RedirectResponse("/static/favicon.svg", status_code=301)
