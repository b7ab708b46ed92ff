"""A small Mastodon-compatible site on 127.0.0.1, for the demo and tests.

``LocalSite`` serves the public, tag and account timelines with Mastodon's
``max_id`` / ``since_id`` / ``min_id`` / ``limit`` semantics and ``Link``
headers, single statuses, a page per status, ``robots.txt`` and the media
files at the URLs the statuses name. Status JSON has the shape of the real
recordings in ``shared/conformance/sites/mastodon``.

Posts can be added and deleted while it runs. For politeness tests it records
every request (``requests``) and can answer the next N requests on a path with
a chosen status (``fail_next``).

    with LocalSite() as site:
        sid = site.add_post(png_bytes, text="my art", author="alice")
        ...  # crawl site.url with the "mastodon" source kind
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = ["LocalSite", "RecordedRequest"]

_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
_FIRST_ID = 200000000000000000  # newer than the recorded conformance statuses


@dataclass
class _Media:
    id: str
    data: bytes
    content_type: str
    path: str
    description: str = ""


@dataclass
class _Post:
    id: str
    author: str
    text: str
    tags: tuple[str, ...]
    media: list[_Media]
    created_at: datetime
    edited_at: datetime | None = None
    sensitive: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # path plus query string
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class LocalSite:
    """Threaded Mastodon-compatible HTTP server on 127.0.0.1 (port 0 = ephemeral)."""

    def __init__(
        self,
        posts: Sequence[dict[str, Any]] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        robots_txt: str = "User-agent: *\nAllow: /\n",
    ) -> None:
        self._lock = threading.Lock()
        self._posts: dict[str, _Post] = {}
        self._media_by_path: dict[str, _Media] = {}
        self._deleted_media: set[str] = set()
        self._next_id = _FIRST_ID
        self._failures: list[tuple[str, int, dict[str, str], int, bytes | None]] = []
        self._raw: dict[str, dict[str, Any]] = {}
        self.robots_txt = robots_txt
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        for post in posts:
            self.add_post(**post)

    # -- lifecycle -----------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def start(self) -> LocalSite:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                name="localsite",
                kwargs={"poll_interval": 0.1},
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LocalSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content -------------------------------------------------------

    def add_post(
        self,
        image: bytes | None = None,
        *,
        content_type: str = "image/png",
        text: str = "",
        author: str = "artist",
        tags: Sequence[str] = (),
        images: Sequence[tuple[bytes, str]] = (),
        created_at: datetime | None = None,
    ) -> str:
        """Publish a status; returns its id (ids increase like Mastodon's).

        ``image``/``content_type`` is one attachment; ``images`` adds more as
        (bytes, content type) pairs. A post without images is a text post."""
        attachments = ([(image, content_type)] if image is not None else []) + list(images)
        with self._lock:
            sid = str(self._next_id)
            self._next_id += 1000
            media: list[_Media] = []
            for i, (data, ctype) in enumerate(attachments):
                mid = str(int(sid) + 1 + i)
                groups = "/".join(mid.zfill(18)[k : k + 3] for k in range(0, 18, 3))
                digest = hashlib.sha256(data + mid.encode()).hexdigest()[:16]
                path = f"/system/media_attachments/files/{groups}/original/{digest}.{_EXT.get(ctype, 'bin')}"
                m = _Media(mid, data, ctype, path)
                media.append(m)
                self._media_by_path[path] = m
            self._posts[sid] = _Post(
                sid,
                author,
                text,
                tuple(t.lower().lstrip("#") for t in tags),
                media,
                created_at or datetime.now(UTC),
            )
        return sid

    def add_status_json(self, status: dict[str, Any]) -> str:
        """Serve a recorded Status object as is (e.g. from the conformance
        payloads) in the public timeline; returns its id."""
        with self._lock:
            self._raw[str(status["id"])] = status
        return str(status["id"])

    def delete_post(self, status_id: str) -> None:
        """Remove a status; its media then answer 404."""
        with self._lock:
            if self._raw.pop(status_id, None) is not None:
                return
            post = self._posts.pop(status_id)
            for m in post.media:
                self._media_by_path.pop(m.path, None)
                self._deleted_media.add(m.path)

    def edit_post(self, status_id: str, text: str) -> None:
        """Change a status's text and set its ``edited_at`` (recorded statuses too)."""
        with self._lock:
            now = datetime.now(UTC)
            raw = self._raw.get(status_id)
            if raw is not None:
                from html import escape

                raw["content"] = f"<p>{escape(text)}</p>"
                raw["edited_at"] = now.isoformat().replace("+00:00", "Z")
                return
            post = self._posts[status_id]
            post.text = text
            post.edited_at = now

    def media_url(self, status_id: str, index: int = 0) -> str:
        with self._lock:
            return self.url + self._posts[status_id].media[index].path

    def status_url(self, status_id: str) -> str:
        with self._lock:
            return f"{self.url}/@{self._posts[status_id].author}/{status_id}"

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        count: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose path starts with ``path_prefix``
        with ``status`` (and ``body``: e.g. a 200 with a broken page)."""
        with self._lock:
            self._failures.append((path_prefix, status, dict(headers or {}), count, body))

    # -- rendering -----------------------------------------------------

    def _status_json(self, p: _Post) -> dict[str, Any]:
        base = self.url
        acct = {
            "id": str(int(hashlib.sha256(p.author.encode()).hexdigest()[:12], 16)),
            "username": p.author,
            "acct": p.author,
            "display_name": p.author,
            "locked": False,
            "bot": False,
            "discoverable": True,
            "group": False,
            "created_at": "2026-01-01T00:00:00.000Z",
            "note": "",
            "url": f"{base}/@{p.author}",
            "uri": f"{base}/users/{p.author}",
            "avatar": f"{base}/avatars/original/missing.png",
            "avatar_static": f"{base}/avatars/original/missing.png",
            "header": f"{base}/headers/original/missing.png",
            "header_static": f"{base}/headers/original/missing.png",
            "followers_count": 0,
            "following_count": 0,
            "statuses_count": 1,
            "emojis": [],
            "fields": [],
        }
        media: list[dict[str, Any]] = []
        for m in p.media:
            media.append(
                {
                    "id": m.id,
                    "type": "image",
                    "url": base + m.path,
                    "preview_url": base + m.path.replace("/original/", "/small/"),
                    "remote_url": None,
                    "preview_remote_url": None,
                    "text_url": None,
                    "meta": {},
                    "description": m.description or None,
                    "blurhash": None,
                }
            )
        from html import escape

        return {
            "id": p.id,
            "created_at": p.created_at.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{p.created_at.microsecond // 1000:03d}Z",
            "in_reply_to_id": None,
            "in_reply_to_account_id": None,
            "sensitive": p.sensitive,
            "spoiler_text": "",
            "visibility": "public",
            "language": "en",
            "uri": f"{base}/users/{p.author}/statuses/{p.id}",
            "url": f"{base}/@{p.author}/{p.id}",
            "replies_count": 0,
            "reblogs_count": 0,
            "favourites_count": 0,
            "edited_at": p.edited_at.isoformat().replace("+00:00", "Z") if p.edited_at else None,
            "content": f"<p>{escape(p.text)}</p>",
            "reblog": None,
            "application": None,
            "account": acct,
            "media_attachments": media,
            "mentions": [],
            "tags": [{"name": t, "url": f"{base}/tags/{t}"} for t in p.tags],
            "emojis": [],
            "card": None,
            "poll": None,
        }

    def _timeline(
        self,
        path: str,
        query: dict[str, list[str]],
        posts: list[_Post],
        raw: Sequence[dict[str, Any]] = (),
    ) -> tuple[bytes, dict[str, str]]:
        def q(name: str) -> str | None:
            v = query.get(name)
            return v[0] if v else None

        items: list[tuple[int, Any]] = [(int(p.id), p) for p in posts] + [
            (int(r["id"]), r) for r in raw
        ]
        if q("only_media") in ("true", "1"):
            items = [
                (i, p)
                for i, p in items
                if (p.media if isinstance(p, _Post) else p.get("media_attachments"))
            ]
        try:
            limit = max(1, min(40, int(q("limit") or 20)))
            max_id, since_id, min_id = (
                int(x) if x else None for x in (q("max_id"), q("since_id"), q("min_id"))
            )
        except ValueError:
            raise _BadRequest("bad pagination parameter") from None
        ordered = sorted(items, key=lambda t: t[0], reverse=True)
        if max_id is not None:
            ordered = [t for t in ordered if t[0] < max_id]
        if since_id is not None:
            ordered = [t for t in ordered if t[0] > since_id]
        if min_id is not None:
            ordered = [t for t in ordered if t[0] > min_id]
            page = list(reversed(list(reversed(ordered))[:limit]))  # immediately after min_id
        else:
            page = ordered[:limit]
        headers: dict[str, str] = {}
        if page:
            keep = {k: v[0] for k, v in query.items() if k not in ("max_id", "min_id", "since_id")}
            nxt = urlencode({**keep, "max_id": page[-1][0]})
            prv = urlencode({**keep, "min_id": page[0][0]})
            headers["Link"] = (
                f'<{self.url}{path}?{nxt}>; rel="next", <{self.url}{path}?{prv}>; rel="prev"'
            )
        body = [self._status_json(p) if isinstance(p, _Post) else p for _, p in page]
        return json.dumps(body).encode(), headers

    def _route(self, method: str, raw_path: str) -> tuple[int, bytes, dict[str, str]]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        with self._lock:
            for i, (prefix, status, hdrs, count, fbody) in enumerate(self._failures):
                if path.startswith(prefix):
                    if count <= 1:
                        self._failures.pop(i)
                    else:
                        self._failures[i] = (prefix, status, hdrs, count - 1, fbody)
                    body = fbody if fbody is not None else f"HTTP {status}".encode()
                    return status, body, {"Content-Type": "text/plain", **hdrs}
            posts = list(self._posts.values())
            raw = list(self._raw.values())
            if path == "/robots.txt":
                return 200, self.robots_txt.encode(), {"Content-Type": "text/plain"}
            if path in self._media_by_path:
                m = self._media_by_path[path]
                etag = '"' + hashlib.sha256(m.data).hexdigest()[:20] + '"'
                return (
                    200,
                    m.data,
                    {
                        "Content-Type": m.content_type,
                        "ETag": etag,
                        "Cache-Control": "public, max-age=31536000",
                    },
                )
            json_hdr = {"Content-Type": "application/json; charset=utf-8"}
            try:
                if path == "/api/v1/timelines/public":
                    body, hdrs = self._timeline(path, query, posts, raw)
                    return 200, body, {**json_hdr, **hdrs}
                if path.startswith("/api/v1/timelines/tag/"):
                    tag = path.rsplit("/", 1)[1].lower()
                    body, hdrs = self._timeline(path, query, [p for p in posts if tag in p.tags])
                    return 200, body, {**json_hdr, **hdrs}
                if path.startswith("/api/v1/accounts/") and path.endswith("/statuses"):
                    acct_id = path.split("/")[4]
                    mine = [p for p in posts if self._status_json(p)["account"]["id"] == acct_id]
                    body, hdrs = self._timeline(path, query, mine)
                    return 200, body, {**json_hdr, **hdrs}
                if path == "/api/v1/accounts/lookup":
                    name = (query.get("acct") or [""])[0]
                    for p in posts:
                        if p.author == name:
                            return (
                                200,
                                json.dumps(self._status_json(p)["account"]).encode(),
                                json_hdr,
                            )
                    return 404, b'{"error":"Record not found"}', json_hdr
                if path == "/api/v1/statuses":  # Mastodon 4.3+: several statuses by id[]
                    found: list[dict[str, Any]] = []
                    for sid in query.get("id[]", []):
                        if sid in self._raw:
                            found.append(self._raw[sid])
                        elif sid in self._posts:
                            found.append(self._status_json(self._posts[sid]))
                    return 200, json.dumps(found).encode(), json_hdr
                if path.startswith("/api/v1/statuses/"):
                    sid = path.rsplit("/", 1)[1]
                    if sid in self._raw:
                        return 200, json.dumps(self._raw[sid]).encode(), json_hdr
                    post = self._posts.get(sid)
                    if post is None:
                        return 404, b'{"error":"Record not found"}', json_hdr
                    return 200, json.dumps(self._status_json(post)).encode(), json_hdr
            except _BadRequest as exc:
                return 400, json.dumps({"error": str(exc)}).encode(), json_hdr
            if path.startswith("/@") and path.count("/") == 2:
                post = self._posts.get(path.rsplit("/", 1)[1])
                if post is not None:
                    imgs = "".join(f'<img src="{self.url}{m.path}" alt="">' for m in post.media)
                    from html import escape

                    page = f"<!doctype html><title>{escape(post.author)}</title><p>{escape(post.text)}</p>{imgs}"
                    return 200, page.encode(), {"Content-Type": "text/html; charset=utf-8"}
            if path in self._deleted_media:
                return 404, b"gone", {"Content-Type": "text/plain"}
        return 404, b"not found", {"Content-Type": "text/plain"}


class _BadRequest(Exception):
    pass


def _make_handler(site: LocalSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "artwatch-localsite/1"
        # Headers and body go out in separate writes; without TCP_NODELAY,
        # Nagle plus delayed ACK stalls every keep-alive response ~40 ms.
        disable_nagle_algorithm = True

        def _serve(self, with_body: bool) -> None:
            site.requests.append(
                RecordedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
                )
            )
            status, body, headers = site._route(self.command, self.path)
            inm = self.headers.get("If-None-Match")
            if status == 200 and inm and headers.get("ETag") == inm:
                status, body = 304, b""
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body and body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._serve(True)

        def do_HEAD(self) -> None:
            self._serve(False)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
