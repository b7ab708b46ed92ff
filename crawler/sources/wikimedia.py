"""Wikimedia EventStreams ``recentchange``, filtered to file uploads.

URL: the stream, e.g. ``https://stream.wikimedia.org/v2/stream/recentchange``.
Params: ``wiki`` (default ``commonswiki``; ``*`` for every wiki).

Upload events are ``type: log``, ``log_type: upload`` (actions ``upload``,
``overwrite``, ``revert``) on namespace 6. The event carries only the title;
the image URL is the wiki's ``Special:FilePath/<name>``, which redirects to
the file. ``log_type: delete`` on a file produces a ``deleted`` record; an
overwrite or revert is flagged ``edited``.

Cursor: ``{"last_event_id": "<the SSE id>"}``, sent back as ``Last-Event-ID``
so the server resumes right after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from crawler.errors import (
    MalformedItem,
    MalformedPage,
    Timeout,
    TransientFetchError,
)
from crawler.fetch import raise_for_status
from crawler.sources.base import Cursor, StreamingSource, UploadRecord, html_to_text, parse_time

__all__ = ["SSEEvent", "WikimediaSource", "event_records", "iter_sse"]

_UPLOAD_ACTIONS = {"upload", "overwrite", "revert"}


class SSEEvent:
    __slots__ = ("data", "event", "id")

    def __init__(self, event: str, data: str, id: str | None) -> None:
        self.event = event
        self.data = data
        self.id = id


def iter_sse(lines: Iterator[str]) -> Iterator[SSEEvent]:
    """Server-sent events from text lines (the WHATWG event-stream format)."""
    event, last_id = "", None
    data: list[str] = []
    pending_id: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                if pending_id is not None:
                    last_id = pending_id
                yield SSEEvent(event or "message", "\n".join(data), last_id)
            event, data, pending_id = "", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id" and "\0" not in value:
            pending_id = value
    if data:
        yield SSEEvent(
            event or "message", "\n".join(data), pending_id if pending_id is not None else last_id
        )


def capped_lines(chunks: Iterator[bytes], max_line: int, url: str) -> Iterator[str]:
    """Text lines (LF, CRLF or CR endings) of a byte stream; MalformedPage for a
    line over ``max_line`` bytes, so a stream that never ends a line cannot
    grow memory without bound."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while True:
            lf, cr = buf.find(b"\n"), buf.find(b"\r")
            cut = min(i for i in (lf, cr) if i >= 0) if (lf >= 0 or cr >= 0) else -1
            if cut < 0 or (buf[cut : cut + 1] == b"\r" and cut == len(buf) - 1):
                break  # no line end yet, or a CR that may be the first half of CRLF
            step = 2 if buf[cut : cut + 2] == b"\r\n" else 1
            line, buf = buf[:cut], buf[cut + step :]
            yield line.decode("utf-8", errors="replace")
        if len(buf) > max_line:
            raise MalformedPage(f"wikimedia: {url}: an event line exceeds {max_line} bytes")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


def _file_name(title: str) -> str:
    return title.split(":", 1)[1] if ":" in title else title


def event_records(
    change: Any, wiki: str = "commonswiki", kind: str = "wikimedia"
) -> list[UploadRecord]:
    """Records for one recentchange object (empty for anything but file uploads/deletes)."""
    if not isinstance(change, dict):
        raise MalformedItem(f"event data is a {type(change).__name__}, not an object")
    if change.get("type") != "log" or (wiki != "*" and change.get("wiki") != wiki):
        return []
    log_type, action = change.get("log_type"), change.get("log_action")
    if change.get("namespace") != 6:
        return []
    title = change.get("title")
    server = change.get("server_url")
    if not isinstance(title, str) or not isinstance(server, str):
        raise MalformedItem(
            f"{log_type} event {change.get('log_id')!r} without title or server_url"
        )
    name = _file_name(title).replace(" ", "_")
    page_url = (change.get("meta") or {}).get("uri") or f"{server}/wiki/{quote('File:' + name)}"
    if log_type == "delete" and action in ("delete", "delete_redir"):
        return [UploadRecord(kind, title, page_url, "", deleted=True)]
    if log_type != "upload" or action not in _UPLOAD_ACTIONS:
        return []
    image_url = f"{server}/wiki/Special:FilePath/{quote(name)}"
    text = html_to_text(str(change.get("parsedcomment") or "")) or str(change.get("comment") or "")
    return [
        UploadRecord(
            kind,
            title,
            page_url,
            image_url,
            author=str(change.get("user") or ""),
            text=text,
            posted_at=parse_time(change.get("timestamp")),
            edited=action != "upload",
        )
    ]


class WikimediaSource(StreamingSource):
    kind = "wikimedia"

    @classmethod
    def validate(cls, url: str, params: Mapping[str, Any]) -> None:
        super().validate(url, params)

    def stream(
        self, cursor: Cursor | None, *, idle_timeout: float | None = None
    ) -> Iterator[tuple[UploadRecord | None, Cursor]]:
        wiki = str(self.params.get("wiki", "commonswiki"))
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        last_id = (cursor or {}).get("last_event_id")
        if last_id:
            headers["Last-Event-ID"] = str(last_id)
        timeout = httpx.Timeout(self.client.timeout.connect or 10.0, read=idle_timeout)
        skipped = 0
        pending: Cursor | None = None  # cursor of skipped events not yet yielded
        try:
            with self.client.stream("GET", self.url, headers=headers, timeout=timeout) as resp:
                raise_for_status(resp)
                ctype = resp.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    raise MalformedPage(
                        f"wikimedia: {resp.url} is {ctype!r}, not text/event-stream"
                    )
                for ev in iter_sse(
                    capped_lines(resp.iter_bytes(), self.max_page_bytes, str(resp.url))
                ):
                    if ev.event != "message":
                        continue
                    cur: Cursor = {"last_event_id": ev.id} if ev.id else dict(cursor or {})
                    try:
                        records = event_records(json.loads(ev.data), wiki, self.kind)
                    except (ValueError, MalformedItem) as exc:
                        self.skip_item(f"event {ev.id!r}", exc)
                        records = []
                    if not records:
                        skipped += 1
                        pending = cur
                        if skipped % 100 == 0:
                            pending = None
                            yield None, cur
                        continue
                    pending = None
                    for rec in records:
                        yield rec, cur
        except httpx.ReadTimeout:
            pass  # idle: end this stream; the caller resumes from the saved cursor
        except httpx.TimeoutException as exc:
            raise Timeout(f"wikimedia: {self.url}: {type(exc).__name__}", self.url) from None
        except httpx.HTTPError as exc:
            raise TransientFetchError(
                f"wikimedia: {self.url}: {type(exc).__name__}: {exc}", self.url
            ) from None
        if pending is not None:
            yield None, pending
