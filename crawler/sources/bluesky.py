"""Bluesky posts with image embeds, from a Jetstream websocket.

URL: the Jetstream subscribe endpoint, e.g.
``wss://jetstream2.us-east.bsky.network/subscribe``; we add
``wantedCollections=app.bsky.feed.post`` and, to resume, ``cursor=<time_us>``.
Params: ``cdn`` (default ``https://cdn.bsky.app/img``) builds image URLs as
``<cdn>/feed_fullsize/plain/<did>/<cid>@jpeg``.

Images come from ``app.bsky.embed.images`` and from the media of
``app.bsky.embed.recordWithMedia``. A post delete produces a ``deleted``
record; an update is flagged ``edited``. Identity events teach us handles;
until then the author is the DID.

Cursor: ``{"time_us": T}`` means every event up to and including T is done;
``{"time_us": T, "done": k}`` means the first k images of event T are done.
Jetstream replays from ``cursor`` inclusive, so resuming skips exactly what
was already yielded.

The websocket does not go through httpx, so the address check is done here
with the same policy: resolve, validate every address, connect a socket to a
validated IP and hand it to the websocket client.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from crawler.errors import InvalidSourceConfig, MalformedItem, Timeout, TransientFetchError
from crawler.fetch import AddressPolicy, policy_of
from crawler.sources.base import Cursor, StreamingSource, UploadRecord, parse_time

__all__ = ["BlueskySource", "event_records"]

POST = "app.bsky.feed.post"


def _images(embed: Any) -> list[dict[str, Any]]:
    if not isinstance(embed, dict):
        return []
    etype = embed.get("$type")
    if etype == "app.bsky.embed.images":
        imgs = embed.get("images")
        if not isinstance(imgs, list):
            raise MalformedItem("images embed without an images list")
        return [i for i in imgs if isinstance(i, dict)]
    if etype == "app.bsky.embed.recordWithMedia":
        return _images(embed.get("media"))
    return []


def event_records(
    event: Any,
    cdn: str = "https://cdn.bsky.app/img",
    handles: Mapping[str, str] | None = None,
    kind: str = "bluesky",
) -> list[UploadRecord]:
    """Records for one Jetstream event (empty unless it is a post with images or a post delete)."""
    if not isinstance(event, dict) or not isinstance(event.get("time_us"), int):
        raise MalformedItem(f"not a Jetstream event: {str(event)[:80]!r}")
    if event.get("kind") != "commit":
        return []
    commit = event.get("commit")
    did = event.get("did")
    if not isinstance(commit, dict) or not isinstance(did, str):
        raise MalformedItem(f"commit event at {event['time_us']} without commit or did")
    if commit.get("collection") != POST:
        return []
    rkey = str(commit.get("rkey") or "")
    post_id = f"at://{did}/{POST}/{rkey}"
    page_url = f"https://bsky.app/profile/{did}/post/{rkey}"
    op = commit.get("operation")
    if op == "delete":
        return [UploadRecord(kind, post_id, page_url, "", deleted=True)]
    if op not in ("create", "update"):
        return []
    record = commit.get("record")
    if not isinstance(record, dict):
        raise MalformedItem(f"{post_id}: {op} without a record")
    out: list[UploadRecord] = []
    author = (handles or {}).get(did, did)
    for img in _images(record.get("embed")):
        blob = img.get("image")
        ref = blob.get("ref") if isinstance(blob, dict) else None
        cid = ref.get("$link") if isinstance(ref, dict) else None
        if not isinstance(cid, str) or not cid:
            raise MalformedItem(f"{post_id}: image without a blob CID")
        out.append(
            UploadRecord(
                kind,
                post_id,
                page_url,
                f"{cdn.rstrip('/')}/feed_fullsize/plain/{did}/{cid}@jpeg",
                author=author,
                text=str(record.get("text") or ""),
                posted_at=parse_time(record.get("createdAt")),
                edited=op == "update",
            )
        )
    return out


class BlueskySource(StreamingSource):
    kind = "bluesky"

    @classmethod
    def validate(cls, url: str, params: Mapping[str, Any]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise InvalidSourceConfig(
                f"bluesky: URL must be a ws:// or wss:// Jetstream URL, got {url!r}"
            )
        cdn = str(params.get("cdn", "https://cdn.bsky.app/img"))
        if urlsplit(cdn).scheme not in ("http", "https"):
            raise InvalidSourceConfig(f"bluesky: cdn must be an http(s) URL, got {cdn!r}")

    def _url(self, cursor_us: int | None) -> str:
        parts = urlsplit(self.url)
        query = [
            (k, v) for k, v in parse_qsl(parts.query) if k not in ("cursor", "wantedCollections")
        ]
        query.append(("wantedCollections", POST))
        if cursor_us is not None:
            query.append(("cursor", str(cursor_us)))
        return urlunsplit(
            (parts.scheme, parts.netloc, parts.path or "/subscribe", urlencode(query), "")
        )

    def _socket(self, policy: AddressPolicy) -> socket.socket:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        timeout = self.client.timeout.connect or 10.0
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise TransientFetchError(f"bluesky: cannot resolve {host}: {exc}", self.url) from None
        import ipaddress

        for info in infos:
            policy.check(host, ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        last: OSError | None = None
        for family, stype, proto, _, addr in infos:
            sock = socket.socket(family, stype, proto)
            sock.settimeout(timeout)
            try:
                sock.connect(addr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise TransientFetchError(f"bluesky: cannot connect to {host}:{port}: {last}", self.url)

    def stream(
        self, cursor: Cursor | None, *, idle_timeout: float | None = None
    ) -> Iterator[tuple[UploadRecord | None, Cursor]]:
        cdn = str(self.params.get("cdn", "https://cdn.bsky.app/img"))
        start = (cursor or {}).get("time_us")
        done_in_start = (cursor or {}).get("done")
        handles: dict[str, str] = {}
        sock = self._socket(policy_of(self.client))
        ua = self.client.headers.get("user-agent")
        pending: Cursor | None = None
        skipped = 0
        try:
            with connect(
                self._url(int(start) if start is not None else None),
                sock=sock,
                user_agent_header=ua,
                open_timeout=self.client.timeout.connect or 10.0,
                max_size=2**22,
            ) as ws:
                while True:
                    try:
                        message = ws.recv(timeout=idle_timeout)
                    except TimeoutError:
                        break
                    try:
                        event = json.loads(message)
                        t = event.get("time_us") if isinstance(event, dict) else None
                        if event.get("kind") == "identity" and isinstance(
                            event.get("identity"), dict
                        ):
                            ident = event["identity"]
                            if isinstance(ident.get("handle"), str) and isinstance(
                                event.get("did"), str
                            ):
                                handles[event["did"]] = ident["handle"]
                        records = event_records(event, cdn, handles, self.kind)
                    except (ValueError, AttributeError, MalformedItem) as exc:
                        self.skip_item(f"message {str(message)[:60]!r}", exc)
                        continue
                    assert isinstance(t, int)
                    if start is not None and t < int(start):
                        continue
                    skip = 0
                    if start is not None and t == int(start):
                        if done_in_start is None:
                            continue  # event fully handled before
                        skip = int(done_in_start)
                    if not records:
                        skipped += 1
                        pending = {"time_us": t}
                        if skipped % 100 == 0:
                            pending = None
                            yield None, {"time_us": t}
                        continue
                    pending = None
                    for i, rec in enumerate(records):
                        if i < skip:
                            continue
                        last = i == len(records) - 1
                        yield rec, ({"time_us": t} if last else {"time_us": t, "done": i + 1})
        except (ConnectionClosed, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise Timeout(f"bluesky: {self.url}: timed out", self.url) from None
            raise TransientFetchError(
                f"bluesky: {self.url}: connection lost: {exc}", self.url
            ) from None
        except (InvalidHandshake, InvalidURI) as exc:
            raise TransientFetchError(
                f"bluesky: {self.url}: handshake failed: {exc}", self.url
            ) from None
        finally:
            sock.close()
        if pending is not None:
            yield None, pending
