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

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
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
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return _render(
            request, exc.status_code, detail, str(exc.status_code), dict(exc.headers or {})
        )

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
