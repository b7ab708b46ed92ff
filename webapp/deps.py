"""Request-scoped dependencies: the database session, who is asking, CSRF checks.

Access rules live here and in :mod:`webapp.access`, so each route states only
which role it needs and which object it loads.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.blobs import BlobStore
from storage.models import Account, Role
from webapp.errors import AuthRequired, Forbidden, InvalidInput, PayloadTooLarge
from webapp.security import LoginThrottle, Signer, account_for_token, client_address, session_account

__all__ = [
    "DB",
    "DEVICE_COOKIE",
    "PRE_COOKIE",
    "SESSION_COOKIE",
    "Viewer",
    "WebContext",
    "api_user",
    "client_ip",
    "csrf_protect",
    "db",
    "get_ctx",
    "page_user",
    "read_upload",
    "require_api_role",
    "require_page_role",
    "run_heavy",
]

P = ParamSpec("P")
T = TypeVar("T")

SESSION_COOKIE = "aw_session"
PRE_COOKIE = "aw_pre"
DEVICE_COOKIE = "aw_device"


@dataclass(frozen=True)
class Viewer:
    """Who is looking, copied out of the session so error pages can render after a rollback."""

    id: int
    email: str
    role: Role


@dataclass
class WebContext:
    """Everything the routes share; one per app."""

    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    signer: Signer
    templates: Jinja2Templates
    engine_factory: Callable[[], Any]
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    max_upload_bytes: int = 20_000_000
    _engine: Any = None
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)
    # The matching engine's index is shared state; writes and reads go through
    # this lock so a registration never races a search in another thread.
    engine_lock: threading.RLock = field(default_factory=threading.RLock)
    heavy_threads: int = 4
    _heavy: ThreadPoolExecutor | None = None
    # Builds the httpx client that re-fetches a notice's URLs before it is sent;
    # None: the crawler's client, which refuses internal addresses (tests point
    # this at a client for their local servers).
    notice_client: Callable[[], Any] | None = None

    @property
    def heavy(self) -> ThreadPoolExecutor:
        """Threads for the engine, decoding and thumbnails: never the event loop, and not
        the shared thread pool that runs the sync routes (``/healthz``, pages), so requests
        queued behind the engine lock cannot starve other tenants' requests."""
        if self._heavy is None:
            with self._engine_lock:
                if self._heavy is None:
                    self._heavy = ThreadPoolExecutor(self.heavy_threads, thread_name_prefix="artwatch-heavy")
        return self._heavy

    @property
    def engine(self) -> Any:
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self.engine_factory()
        return self._engine

    @property
    def secure_cookies(self) -> bool:
        return self.settings.web.base_url.startswith("https://")


def get_ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def client_ip(request: Request) -> str:
    """The client's address: the peer, or what a configured proxy says (web.trusted_proxies)."""
    peer = request.client.host if request.client else "unknown"
    return client_address(
        peer,
        request.headers.get("x-forwarded-for", ""),
        get_ctx(request).settings.web.trusted_proxies,
    )


def db(request: Request) -> Iterator[Session]:
    """One unit of work per request: committed when the route returns normally."""
    session = get_ctx(request).sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# FastAPI's default scope for a yield dependency ends it after the response has been sent:
# the commit would race the browser's next request (a redirect followed at once) and a
# failed commit could follow a success response. Function scope commits before responding.
DB: Any = Depends(db, scope="function")


def page_user(request: Request, session: Session = DB) -> Account:
    key = request.cookies.get(SESSION_COOKIE)
    account = session_account(session, key) if key else None
    if account is None:
        raise AuthRequired("log in to see this page")
    request.state.viewer = Viewer(account.id, account.email, account.role)
    return account


def api_user(request: Request, session: Session = DB) -> Account:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthRequired(
            "send an API token as 'Authorization: Bearer <token>' "
            "(create one on your profile page or with 'artwatch users token EMAIL')"
        )
    account = account_for_token(session, token.strip())
    if account is None:
        raise AuthRequired("the API token is not valid (it may have been replaced by a newer one)")
    return account


def _role_check(*roles: Role) -> Callable[[Account], Account]:
    def check(account: Account) -> Account:
        if account.role not in roles:
            names = " or ".join(r.value for r in roles)
            raise Forbidden(
                f"this needs the {names} role; you are signed in as {account.role.value}"
            )
        return account

    return check


def require_page_role(*roles: Role) -> Any:
    check = _role_check(*roles)

    def dep(account: Account = Depends(page_user)) -> Account:
        return check(account)

    return Depends(dep)


def require_api_role(*roles: Role) -> Any:
    check = _role_check(*roles)

    def dep(account: Account = Depends(api_user)) -> Account:
        return check(account)

    return Depends(dep)


def csrf_binding(request: Request) -> str:
    """What a CSRF token is bound to: the session cookie, else the pre-login cookie."""
    return str(
        request.cookies.get(SESSION_COOKIE)
        or request.cookies.get(PRE_COOKIE)
        or getattr(request.state, "pre_cookie", "")
    )


async def csrf_protect(request: Request) -> None:
    """Every state-changing form must carry the token rendered into it."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    token = request.headers.get("x-csrf-token", "")
    if not token:
        form = await request.form()
        value = form.get("csrf_token")
        token = value if isinstance(value, str) else ""
    binding = csrf_binding(request)
    if not token or not binding or not get_ctx(request).signer.check_csrf(token, binding):
        raise Forbidden(
            "the form's security token is missing or stale; reload the page and try again"
        )


async def run_heavy(ctx: WebContext, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` on the context's heavy-work threads and wait for it without blocking the loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(ctx.heavy, functools.partial(fn, *args, **kwargs))


async def read_upload(request: Request, file: Any) -> bytes:
    """The bytes of an uploaded file, refusing more than the configured cap."""
    limit = get_ctx(request).max_upload_bytes
    if file is None or not getattr(file, "filename", ""):
        raise InvalidInput("choose an image file to upload")
    data: bytes = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the file is larger than the {limit // 1_000_000} MB limit")
    if not data:
        raise InvalidInput(f"the file {file.filename!r} is empty")
    return data
