"""Real servers for the review-to-sent tests: SMTP (aiosmtpd) for the notices, and a
small HTTP server for the pages they name (re-fetched before sending)."""

from __future__ import annotations

import email
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from webapp_testkit import World, make_settings

from webapp import create_app


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=default_policy)
        assert isinstance(msg, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    from aiosmtpd.controller import Controller

    box = Inbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@dataclass
class Pages:
    """Serves ``status[path]`` (default 200) for GET; records each hit."""

    base: str
    status: dict[str, int] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def pages() -> Iterator[Pages]:
    state = Pages("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            code = state.status.get(self.path, 200)
            body = b"<html><body>copied picture</body></html>" if code == 200 else b"gone"
            self.send_response(code)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def send_world(world: World, inbox: tuple[Inbox, int]) -> World:
    """The web app with SMTP pointed at the local aiosmtpd server, and the re-fetch before sending
    done by a plain client (the crawler's client refuses 127.0.0.1, where the test pages live)."""
    _, port = inbox
    world.settings = make_settings(
        world.settings.data_dir,
        notices={"smtp_host": "127.0.0.1", "smtp_port": port, "from_address": "notices@artwatch.test"},
    )
    world.app = create_app(world.settings, sessions=world.sessions, blobs=world.blobs, engine=world.engine)
    world.app.state.ctx.notice_client = lambda: httpx.Client(timeout=10)
    return world
