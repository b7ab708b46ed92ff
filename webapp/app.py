"""The web app factory: pages for owners, reviewers and admins, and the JSON API."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from notices.content import clean_inline, web_url
from registry.root import Services
from storage.blobs import BlobStore
from webapp.deps import PRE_COOKIE, SESSION_COOKIE, WebContext, csrf_binding
from webapp.errors import install_error_handlers
from webapp.gate import RequestGate
from webapp.security import Signer, resolve_secret_key, security_headers

__all__ = ["create_app", "route_table"]

HERE = Path(__file__).parent

def _template_context(request: Request) -> dict[str, Any]:
    ctx: WebContext = request.app.state.ctx
    binding = csrf_binding(request)
    return {
        "viewer": getattr(request.state, "viewer", None),
        "csrf_token": ctx.signer.csrf_token(binding) if binding else "",
    }


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
    )
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else "—"
    # Crawled strings: one line; and only http(s) URLs become links.
    env.filters["oneline"] = clean_inline
    env.filters["web_url"] = web_url
    env.filters["pct"] = lambda v: f"{float(v) * 100:.0f}%" if v is not None else "—"
    env.filters["points"] = lambda region: " ".join(
        f"{float(x):.1f},{float(y):.1f}" for x, y in region or []
    )
    from webapp.evidence_text import human_number, signal_label, signal_value

    env.filters["signal_label"] = signal_label
    env.filters["signal_value"] = signal_value
    env.filters["num"] = human_number
    return Jinja2Templates(env=env, context_processors=[_template_context])


def create_app(
    settings: Settings,
    *,
    sessions: sessionmaker[Session] | None = None,
    blobs: BlobStore | None = None,
    engine: Any = None,
    services: Services | None = None,
) -> FastAPI:
    """Build the app. Anything not passed in comes from ``services``, else from
    one :class:`registry.root.Services` built from the settings.

    ``engine`` is the matching engine; when omitted it is built on first use
    (with the maintenance hook: a registration returns without waiting for the
    retrain it makes due), so pages that never match start fast.
    """
    from webapp.routes import admin, api, auth, dashboard, lists, owner, review

    if services is None:
        services = Services.build(settings, sessions=sessions, blobs=blobs, matcher=engine)
    shared = services
    sessions = sessions if sessions is not None else shared.sessions
    blobs = blobs if blobs is not None else shared.blobs

    def build_engine() -> Any:
        return engine if engine is not None else shared.matcher

    ctx = WebContext(
        settings=settings,
        sessions=sessions,
        blobs=blobs,
        signer=Signer(resolve_secret_key(settings, services.documents)),
        templates=_templates(),
        engine_factory=build_engine,
        max_upload_bytes=settings.crawler.max_image_bytes,
        heavy_threads=settings.web.heavy_threads,
    )
    app = FastAPI(
        title="artwatch",
        version="1",
        description="Register works, list matches and notices, and check an image for copies. "
        "Authenticate with 'Authorization: Bearer <API token>'. Errors are RFC 9457 "
        "problem details (application/problem+json).",
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    # Inside browser_hygiene (added after it), so its early 401/413 carry the security headers.
    app.add_middleware(RequestGate, ctx=ctx)

    @app.middleware("http")
    async def browser_hygiene(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # A pre-login cookie gives the login form something to bind its CSRF token to.
        fresh_pre = None
        if not request.cookies.get(SESSION_COOKIE) and not request.cookies.get(PRE_COOKIE):
            fresh_pre = secrets.token_urlsafe(24)
            request.state.pre_cookie = fresh_pre
        response = await call_next(request)
        if fresh_pre and not request.url.path.startswith("/api/"):
            response.set_cookie(
                PRE_COOKIE, fresh_pre, httponly=True, samesite="lax", secure=ctx.secure_cookies
            )
        for name, value in security_headers(ctx.secure_cookies).items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        """Liveness for compose and load balancers: the database answers a query."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with ctx.sessions() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (auth, dashboard, lists, owner, review, admin, api):
        app.include_router(module.router)
    api.install_problem_schema(app)
    return app


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app answers, including routes of included routers.

    The tenant-isolation test compares this with its own table, so a new route
    without an isolation test fails the suite.
    """
    out: list[tuple[str, str]] = []

    def walk(routes: Any, prefix: str) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                context = getattr(route, "include_context", None)
                walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
                continue
            path = getattr(route, "path", None)
            if path is None:
                continue
            methods = getattr(route, "methods", None) or {"MOUNT"}
            out.extend((m, prefix + path) for m in sorted(methods) if m != "HEAD")

    walk(app.routes, "")
    return sorted(set(out))
