"""The request gate: who is asking, and how many body bytes they may send, decided from the headers.

FastAPI reads and parses a request's whole body (a multipart upload, spooled
to disk) before it runs any dependency, so an authentication dependency alone
would let anyone upload hundreds of megabytes before hearing 401. This ASGI
middleware runs first, for every request that announces a body
(``Content-Length`` above zero or ``Transfer-Encoding``):

- It looks the credential up (an API token under ``/api/``, the session cookie
  elsewhere) in a worker thread, never on the event loop.
- An ``/api/`` request without a valid token is answered 401 at once.
- The body limit is ``web.max_request_bytes`` for a signed-in caller and
  ``web.anonymous_request_bytes`` (room for a login form) for anyone else.
  A ``Content-Length`` over the limit is answered 413 at once; a chunked body
  is counted as it is read and refused with 413 at the first byte over.

In both early answers no byte of the body is read: the server replies while
the client is still sending, and the connection is closed. Each file in the
body is still capped by ``crawler.max_image_bytes`` (:func:`webapp.deps.read_upload`).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webapp.errors import AuthRequired, PayloadTooLarge, WebError, render_error

__all__ = ["RequestGate"]


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` so FastAPI's body parser re-raises it as an HTTP error, not a 400."""


def _mb(n: int) -> str:
    return f"{n / 1_000_000:g} MB" if n >= 1_000_000 else f"{n // 1024} KiB"


class RequestGate:
    """ASGI middleware; see the module docstring. ``ctx`` is the app's :class:`webapp.deps.WebContext`."""

    def __init__(self, app: ASGIApp, ctx: Any) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = _content_length(headers)
        chunked = "transfer-encoding" in headers
        if not chunked and not length:
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith("/api/")
        signed_in = await run_in_threadpool(self._signed_in, headers, api)
        if api and not signed_in:
            await self._refuse(scope, receive, send, AuthRequired(
                "send a valid API token as 'Authorization: Bearer <token>' before the request body"
            ))
            return
        web = self.ctx.settings.web
        limit = int(web.max_request_bytes if signed_in else web.anonymous_request_bytes)
        detail = f"the request body is larger than the {_mb(limit)} limit" + (
            "" if signed_in else " for a request that is not signed in"
        )
        if length is not None and length > limit:
            await self._refuse(scope, receive, send, PayloadTooLarge(detail))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(413, detail)
            return message

        await self.app(scope, counted, send)

    def _signed_in(self, headers: Headers, api: bool) -> bool:
        from webapp.deps import SESSION_COOKIE
        from webapp.security import account_for_token, session_account

        with self.ctx.sessions() as session:
            if api:
                scheme, _, token = headers.get("authorization", "").partition(" ")
                return scheme.lower() == "bearer" and bool(token.strip()) and (
                    account_for_token(session, token.strip()) is not None
                )
            key = Request({"type": "http", "headers": headers.raw}).cookies.get(SESSION_COOKIE)
            return key is not None and bool(key) and session_account(session, key) is not None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: WebError) -> None:
        response = render_error(Request(scope, receive), exc)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _content_length(headers: Headers) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None
