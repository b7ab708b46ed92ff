"""Errors the web app raises, and their rendering.

Under ``/api/`` every error is an RFC 9457 problem details document
(``application/problem+json``); pages get a small HTML error page, and a page
that needs a login redirects to it.

Hierarchy::

    WebError(status, detail)
     ├── NotFound            404 (also: "exists but belongs to someone else")
     ├── AuthRequired        401
     ├── Forbidden           403
     ├── Conflict            409 (the object's state does not allow it)
     ├── PayloadTooLarge     413
     ├── UnsupportedImage    415
     ├── InvalidInput        422
     └── TooManyRequests     429 (carries retry_after seconds)
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "AuthRequired",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "UnsupportedImage",
    "WebError",
    "install_error_handlers",
    "problem_response",
    "render_error",
]

PROBLEM_TYPE_BASE = "https://artwatch.invalid/problems/"

log = logging.getLogger(__name__)


class WebError(Exception):
    status = 500
    slug = "error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(WebError):
    status = 404
    slug = "not-found"


class AuthRequired(WebError):
    status = 401
    slug = "unauthorized"


class Forbidden(WebError):
    status = 403
    slug = "forbidden"


class Conflict(WebError):
    status = 409
    slug = "conflict"


class PayloadTooLarge(WebError):
    status = 413
    slug = "too-large"


class UnsupportedImage(WebError):
    status = 415
    slug = "unsupported-image"


class InvalidInput(WebError):
    status = 422
    slug = "invalid-input"


class TooManyRequests(WebError):
    status = 429
    slug = "too-many-requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (slug or str(status)),
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    body.update(extra)
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def _render(
    request: Request,
    status: int,
    detail: str,
    slug: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    if _is_api(request):
        if status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="artwatch"'}
        return problem_response(request, status, detail, slug=slug, headers=headers, **extra)
    if status == 401:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    templates = request.app.state.ctx.templates
    response: Response = templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": HTTPStatus(status).phrase, "detail": detail},
        status_code=status,
        headers=headers,
    )
    return response


def render_error(request: Request, exc: WebError) -> Response:
    """The response for ``exc``: problem details under ``/api/``, the error page elsewhere."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    return _render(request, exc.status, exc.detail, exc.slug, headers, **exc.extra)


def install_error_handlers(app: FastAPI) -> None:
    async def web_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebError)
        return render_error(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"nothing at {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
            headers["Allow"] = _allowed_methods(request)
        return _render(request, exc.status_code, detail, str(exc.status_code), headers)

    async def number_out_of_range(request: Request, exc: Exception) -> Response:
        # An id or offset past the database's 64-bit integers (SQLite refuses to
        # bind it, PostgreSQL answers "bigint out of range"): the client's input
        # is wrong, so answer like any other invalid input.
        if isinstance(exc, DataError) and not _is_out_of_range(exc):
            return await unexpected(request, exc)
        return _render(request, 422, "a number in the request is out of range", "invalid-input")

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette calls this outside every middleware, so the response gets
        # the security headers here; the traceback goes to the log only.
        from webapp.security import security_headers

        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        detail = "something went wrong on our side; the error has been logged"
        if _is_api(request):
            response: Response = problem_response(request, 500, detail, slug="internal-error")
        else:
            response = HTMLResponse(
                f"<!doctype html><title>Internal Server Error</title><h1>Internal Server Error</h1>"
                f"<p>{detail}</p>",
                status_code=500,
            )
        secure = request.app.state.ctx.secure_cookies
        for name, value in security_headers(secure).items():
            response.headers.setdefault(name, value)
        return response

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = []
        for err in exc.errors():
            loc = [
                str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")
            ]
            errors.append(
                {"field": ".".join(loc) or "(request)", "message": str(err.get("msg", ""))}
            )
        detail = (
            "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "the request is not valid"
        )
        return _render(request, 422, detail, "invalid-input", errors=errors)

    app.add_exception_handler(WebError, web_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(OverflowError, number_out_of_range)
    app.add_exception_handler(DataError, number_out_of_range)
    app.add_exception_handler(Exception, unexpected)


def _allowed_methods(request: Request) -> str:
    """Every method some route answers on this path.

    Starlette's own 405 names only the methods of the first route whose path
    matched, so ``PUT /api/v1/works/1`` was told ``GET`` although DELETE works too.
    """
    from starlette.routing import compile_path

    from webapp.app import route_table

    path = request.url.path
    methods = {
        method
        for method, template in route_table(request.app)
        if method != "MOUNT" and compile_path(template)[0].match(path)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _is_out_of_range(exc: DataError) -> bool:
    # psycopg's NumericValueOutOfRange (SQLSTATE 22003), without importing psycopg here.
    return getattr(exc.orig, "sqlstate", None) == "22003"
