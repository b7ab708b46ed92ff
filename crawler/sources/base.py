"""The one interface every site source implements.

A source turns a site's own API or feed into :class:`UploadRecord` values, one
per image, starting from a saved cursor. ``poll(cursor)`` returns everything new
since that cursor and the cursor to save *with* those records; saving both in one
transaction is what makes a crash safe (nothing missed, nothing twice).
Streaming sources also offer ``stream(cursor)``, yielding each record with the
cursor that resumes just after it.

Subclasses write ``poll`` (or ``stream``) and, if their URL or params need
checking, ``validate``. Fetching, size caps and error mapping live here.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from crawler.errors import InvalidSourceConfig, MalformedItem, MalformedPage
from crawler.fetch import Page, Params, fetch_page

__all__ = ["Cursor", "Source", "StreamingSource", "UploadRecord", "html_to_text", "parse_time"]

log = logging.getLogger("crawler.sources")

Cursor = dict[str, Any]


@dataclass(frozen=True)
class UploadRecord:
    """One image seen in one post.

    ``deleted`` records announce that a post is gone: ``image_url`` may then be
    empty, meaning every image of ``post_id`` from this source. ``edited`` marks
    a post seen again after an edit.
    """

    source_kind: str
    post_id: str
    page_url: str
    image_url: str
    author: str = ""
    text: str = ""
    posted_at: datetime | None = None
    deleted: bool = False
    edited: bool = False


_TAG_RE = re.compile(r"<[^>]+>")
_BR_RE = re.compile(r"<\s*(br|/p)\s*/?>", re.IGNORECASE)


def html_to_text(fragment: str) -> str:
    """Plain text of an HTML fragment (post bodies), whitespace collapsed."""
    text = _BR_RE.sub("\n", fragment or "")
    text = html.unescape(_TAG_RE.sub("", text))
    return "\n".join(" ".join(line.split()) for line in text.splitlines()).strip()


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 (with ``Z``), RFC 822 dates or epoch seconds -> aware datetime; None if unparseable."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), UTC)
    s = str(value).strip()
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            dt = parsedate_to_datetime(s)
        except (TypeError, ValueError):
            return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class Source(ABC):
    """A site source. Construct with the source's URL, params and an injected client."""

    kind: ClassVar[str]
    streaming: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        params: Mapping[str, Any] | None,
        client: httpx.Client,
        *,
        max_page_bytes: int = 5_000_000,
    ) -> None:
        self.url = url
        self.params: dict[str, Any] = dict(params or {})
        self.client = client
        self.max_page_bytes = max_page_bytes
        self.validate(url, self.params)

    @abstractmethod
    def poll(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        """Records new since ``cursor`` and the cursor to save with them.

        Raises MalformedPage (or a FetchError) when the page as a whole is
        unusable; the caller keeps the old cursor and retries later. A
        malformed single item is logged and skipped.
        """

    @classmethod
    def validate(cls, url: str, params: Mapping[str, Any]) -> None:
        """Raise InvalidSourceConfig if ``url``/``params`` cannot work for this kind."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidSourceConfig(
                f"{cls.kind}: URL must be an absolute http(s) URL, got {url!r}"
            )

    # -- shared plumbing -------------------------------------------------

    def get_page(
        self,
        url: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        return fetch_page(
            self.client, url, params=params, headers=headers, max_bytes=self.max_page_bytes
        )

    def get_json(self, url: str, *, params: Params = None) -> tuple[Any, Page]:
        page = self.get_page(url, params=params, headers={"Accept": "application/json"})
        try:
            return json.loads(page.body), page
        except ValueError as exc:
            raise MalformedPage(f"{self.kind}: {page.url} is not valid JSON: {exc}") from None

    def skip_item(self, where: str, exc: Exception) -> None:
        """Log a malformed item clearly; the caller continues with the next one."""
        log.error("%s: skipping malformed item %s: %s", self.kind, where, exc)

    @staticmethod
    def need(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
        """``obj[key]`` checked for type, or MalformedItem naming ``where``."""
        if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], typ):
            raise MalformedItem(f"{where}: missing or invalid {key!r}")
        return obj[key]


class StreamingSource(Source):
    """A source fed by a long-lived connection (SSE, websocket).

    ``stream(cursor)`` yields ``(record, cursor)``; saving that cursor with the
    record resumes exactly after it. ``record`` is None for a checkpoint: an
    event without images whose cursor is still worth saving. ``poll`` reads the stream for a bounded
    time so the same source also works from the periodic scheduler.
    """

    streaming = True

    @abstractmethod
    def stream(
        self, cursor: Cursor | None, *, idle_timeout: float | None = None
    ) -> Iterator[tuple[UploadRecord | None, Cursor]]:
        """Records from ``cursor`` on. With ``idle_timeout`` the stream ends
        after that many seconds without an event; without it, it runs until
        the connection drops (raising FetchError) or the caller stops iterating."""

    def poll(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        """Read the stream until it is idle for ``poll_idle_seconds`` (2),
        ``poll_max_records`` (500) records or ``poll_max_seconds`` (20) pass."""
        idle = float(self.params.get("poll_idle_seconds", 2.0))
        limit = int(self.params.get("poll_max_records", 500))
        deadline = time.monotonic() + float(self.params.get("poll_max_seconds", 20.0))
        records: list[UploadRecord] = []
        last: Cursor = dict(cursor or {})
        for record, cur in self.stream(cursor, idle_timeout=idle):
            last = cur
            if record is not None:
                records.append(record)
            if len(records) >= limit or time.monotonic() > deadline:
                break
        return records, last
