"""Real servers on 127.0.0.1 for the crawler tests: HTTP routes, SSE, websocket."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.sync.server import Server, ServerConnection, serve


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: Iterator[bytes] | None = None  # written chunk by chunk, then the connection closes


@dataclass(frozen=True)
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


Route = Callable[[str, dict[str, str], dict[str, str]], Reply]


class PayloadServer:
    """HTTP server whose routes (path -> function) can change while it runs."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> PayloadServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def static(self, path: str, body: bytes, content_type: str, **headers: str) -> None:
        self.routes[path] = lambda p, q, h: Reply(
            200, {"Content-Type": content_type, **headers}, body
        )

    def hits(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(Seen(parts.path, query, headers, time.monotonic()))
                route = server.routes.get(parts.path)
                reply = route(parts.path, query, headers) if route else Reply(404, {}, b"not found")
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.stream is not None:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for chunk in reply.stream:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def concurrency_route(server: PayloadServer, path: str, hold_s: float) -> dict[str, int]:
    """Serve ``path`` holding each request ``hold_s``; the returned dict's ``max`` is
    the most requests the server ever had in flight at once (``now``: at present)."""
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(p: str, q: dict[str, str], h: dict[str, str]) -> Reply:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(hold_s)
        with lock:
            state["now"] -= 1
        return Reply(200, {"Content-Type": "text/plain"}, b"ok")

    server.routes[path] = slow
    return state


class DripServer:
    """A raw TCP server on 127.0.0.1 that answers every connection by writing
    ``pieces`` one at a time, ``interval`` seconds apart: each write lands well
    inside a read timeout, so only a deadline on the whole exchange stops it.
    http.server cannot do this: it buffers the status line and headers."""

    def __init__(self, pieces: list[bytes], interval: float) -> None:
        self.pieces = pieces
        self.interval = interval
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> DripServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)  # the request; its content does not matter
            for piece in self.pieces:
                if self._stop.wait(self.interval):
                    return
                try:
                    conn.sendall(piece)
                except OSError:
                    return  # the client gave up: what the test wants


def sse_frames(
    events: list[tuple[str, str]], last_event_id: str | None, hold: float
) -> Iterator[bytes]:
    """Frames for (id, data) events after ``last_event_id``, then keep the stream open ``hold`` s."""
    start = 0
    if last_event_id is not None:
        ids = [i for i, _ in events]
        if last_event_id in ids:
            start = ids.index(last_event_id) + 1
    yield b":ok\n\n"
    for ev_id, data in events[start:]:
        yield f"event: message\nid: {ev_id}\ndata: {data}\n\n".encode()
    time.sleep(hold)


class JetstreamServer:
    """Websocket server replaying Jetstream events from ``cursor`` (inclusive, like Jetstream)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.extra_messages: list[str] = []  # raw messages sent after the events (e.g. garbage)
        self.reject_next = 0
        self.connections: list[str] = []
        self._server: Server = serve(self._handle, "127.0.0.1", 0, process_request=self._process)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"ws://{host}:{port}/subscribe"

    def start(self) -> JetstreamServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()

    def _process(self, connection: ServerConnection, request: Any) -> Any:
        self.connections.append(request.path)
        if self.reject_next > 0:
            self.reject_next -= 1
            return connection.respond(500, "jetstream is broken\n")
        return None

    def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        cursor = int(query["cursor"]) if "cursor" in query else None
        for ev in sorted(self.events, key=lambda e: e["time_us"]):
            if cursor is None or ev["time_us"] >= cursor:
                ws.send(json.dumps(ev))
        for raw in self.extra_messages:
            ws.send(raw)
        try:
            for _ in ws:  # until the client goes away
                pass
        except Exception:  # noqa: BLE001 - however the client leaves, the handler just ends
            pass
