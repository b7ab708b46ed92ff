"""Real local servers for the notices tests: SMTP (aiosmtpd) and HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    envelopes: list[Envelope] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    box: Mailbox


def _authenticator(box: Mailbox) -> Any:
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user, pw = auth_data.login.decode(), auth_data.password.decode()
            box.logins.append((user, pw))
            ok = (user, pw) == ("sender", "s3cret")
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    return check


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    box = Mailbox()
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port,
                            authenticator=_authenticator(box), auth_require_tls=False,
                            auth_exclude_mechanism=["LOGIN"])
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, box)
    finally:
        controller.stop()


@dataclass
class WebServer:
    """Serves ``routes[path] = (status, body)``; unknown paths are 404; for a
    3xx status the body is the Location."""

    base: str
    routes: dict[str, tuple[int, bytes]]
    hits: list[str]

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def web_server() -> Iterator[WebServer]:
    routes: dict[str, tuple[int, bytes]] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, with_body: bool) -> None:
            hits.append(self.path)
            status, body = routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            if 300 <= status < 400:  # the body names the redirect target
                self.send_header("Location", body.decode())
                body = b""
            self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._serve(True)

        def do_HEAD(self) -> None:
            self._serve(False)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebServer(f"http://127.0.0.1:{server.server_address[1]}", routes, hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ------------------------------------------------------------------ database


@pytest.fixture
def sessions(database_url: str) -> Iterator[Any]:
    """A sessionmaker on a fresh schema: SQLite and the real PostgreSQL."""
    from storage.db import make_engine, make_sessionmaker
    from storage.models import Base

    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def sqlite_sessions(tmp_path: Any) -> Iterator[Any]:
    from storage.db import make_engine, make_sessionmaker
    from storage.models import Base

    engine = make_engine(f"sqlite:///{tmp_path / 'notices.db'}")
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()
