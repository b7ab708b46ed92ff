"""Long-lived consumers for streaming sources (SSE, websocket).

``run_stream`` keeps one source's stream open, commits every record together
with the cursor that resumes after it (one short transaction each, so a crash
loses nothing and repeats nothing), hands new upload ids to ``on_new_upload``
after the commit, and reconnects with exponential backoff plus jitter when the
connection drops. It resumes from the cursor saved in the database, so a
restarted process picks up where the last one committed.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from sqlalchemy.orm import Session, sessionmaker

from crawler.errors import CrawlError, InvalidSourceConfig, UnknownSourceKind
from crawler.service import build_source, record_uploads
from crawler.sources.base import StreamingSource
from storage.db import session_scope
from storage.models import Source as SourceRow

__all__ = ["run_stream"]

log = logging.getLogger("crawler.stream")


def run_stream(
    session_factory: sessionmaker[Session],
    source_row_id: int,
    client: httpx.Client,
    on_new_upload: Callable[[int], None],
    stop_event: threading.Event,
    *,
    base_backoff: float = 1.0,
    max_backoff: float = 300.0,
    idle_timeout: float = 1.0,
) -> None:
    """Consume source ``source_row_id`` until ``stop_event`` is set.

    ``idle_timeout`` bounds how long a quiet stream blocks before the stop
    event is checked again (the stream is then resumed from the cursor).
    Raises InvalidSourceConfig / UnknownSourceKind at once (reconnecting cannot
    fix those) and ValueError for a source that does not stream."""
    failures = 0
    while not stop_event.is_set():
        with session_scope(session_factory) as s:
            row = s.get(SourceRow, source_row_id)
            if row is None or not row.enabled:
                log.info("stream %s: source gone or disabled; stopping", source_row_id)
                return
            source = build_source(row, client)
            cursor = row.cursor
            name = row.name
        if not isinstance(source, StreamingSource):
            raise ValueError(f"source {name!r} ({source.kind}) does not stream; poll it instead")
        items = 0
        try:
            for record, next_cursor in source.stream(cursor, idle_timeout=idle_timeout):
                items += 1
                with session_scope(session_factory) as s:
                    row = s.get(SourceRow, source_row_id)
                    if row is None:
                        return
                    need: list[int] = []
                    if record is not None:
                        need, created = record_uploads(s, row, [record])
                        row.uploads_seen = (row.uploads_seen or 0) + created
                    row.cursor = next_cursor
                    row.last_success_at = datetime.now(UTC)
                    row.last_error = None
                for upload_id in need:
                    on_new_upload(upload_id)
                failures = 0
                if stop_event.is_set():
                    return
            if items == 0:
                # Quiet or closed at once: do not hammer a server that hangs up.
                stop_event.wait(base_backoff)
        except (InvalidSourceConfig, UnknownSourceKind):
            raise
        except CrawlError as exc:
            failures += 1
            delay = min(max_backoff, base_backoff * 2 ** (failures - 1))
            delay = delay / 2 + random.random() * delay / 2
            log.warning("stream %s: %s; reconnecting in %.1fs", name, exc, delay)
            with session_scope(session_factory) as s:
                row = s.get(SourceRow, source_row_id)
                if row is not None:
                    row.last_error = f"{type(exc).__name__}: {exc}"
                    row.last_error_at = datetime.now(UTC)
            stop_event.wait(delay)
