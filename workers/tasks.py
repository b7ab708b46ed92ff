"""Thin Celery tasks: ids in, reload the record, call a domain function, store.

Every task is idempotent (the domain functions upsert by natural ids) and
exits cleanly when its record has gone. Transient failures retry with
exponential backoff and jitter, declared on the decorator; a task that still
fails after its retries is written to the dead-letter table, from where
``artwatch deadletters replay`` sends it again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Task
from sqlalchemy import select

from storage.db import session_scope
from storage.models import DeadLetter, Source
from workers.app import app
from workers.runtime import get_runtime

__all__ = [
    "analyse_upload",
    "crawl_due_sources",
    "crawl_source",
    "draft_notice",
    "fetch_upload",
    "notify_owner",
    "send_digests",
]

log = logging.getLogger(__name__)

# Errors worth retrying: the network, the broker or the database blinked.
# Anything else (a bad image, a bug) goes to the dead-letter table at once.
try:
    import httpx
    from sqlalchemy.exc import OperationalError

    TRANSIENT: tuple[type[BaseException], ...] = (httpx.TransportError, OperationalError, ConnectionError, TimeoutError)
except ImportError:  # pragma: no cover
    TRANSIENT = (ConnectionError, TimeoutError)


class ArtwatchTask(Task):  # type: ignore[misc]
    """Records a task that has failed for good in the dead-letter table."""

    abstract = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        try:
            rt = get_runtime()
            with session_scope(rt.sessions) as s:
                s.add(DeadLetter(
                    task=self.name,
                    args=list(args or []),
                    kwargs=dict(kwargs or {}),
                    error=f"{type(exc).__name__}: {exc}",
                    tries=self.request.retries + 1,
                ))
        except Exception:  # the database itself may be what failed
            log.exception("could not record dead letter for %s%r", self.name, args)


_RETRY = dict(
    base=ArtwatchTask,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)


@app.task(name="artwatch.crawl_source", **_RETRY)
def crawl_source(source_id: int) -> int:
    """Poll one source from its saved cursor and queue a fetch per new image."""
    from crawler.service import build_client, poll_source

    rt = get_runtime()
    with build_client(rt.settings.crawler) as client:
        with session_scope(rt.sessions) as s:
            source = s.get(Source, source_id)
            if source is None or not source.enabled:
                return 0
            new_ids = poll_source(s, source, client, rt.settings.crawler)
    for upload_id in new_ids:
        fetch_upload.delay(upload_id)
    return len(new_ids)


@app.task(name="artwatch.crawl_due_sources", **_RETRY)
def crawl_due_sources() -> int:
    """Beat entry: queue a crawl for every enabled polling source that is due."""
    rt = get_runtime()
    now = datetime.now(timezone.utc)
    due: list[int] = []
    with session_scope(rt.sessions) as s:
        for src in s.scalars(select(Source).where(Source.enabled.is_(True))):
            last = src.last_success_at
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=timezone.utc)
            if last is None or now - last >= timedelta(seconds=src.poll_seconds):
                due.append(src.id)
    for sid in due:
        crawl_source.delay(sid)
    return len(due)


@app.task(name="artwatch.fetch_upload", **_RETRY)
def fetch_upload(upload_id: int) -> bool:
    """Download an upload's image as evidence, then queue its analysis."""
    from crawler.service import build_client, fetch_upload as fetch
    from crawler.fetch import SafeFetcher

    rt = get_runtime()
    with build_client(rt.settings.crawler) as client:
        fetcher = SafeFetcher(client, rt.settings.crawler)
        with session_scope(rt.sessions) as s:
            ready = fetch(s, rt.blobs, upload_id, fetcher)
    if ready:
        analyse_upload.delay(upload_id)
    return ready


@app.task(name="artwatch.analyse_upload", **_RETRY)
def analyse_upload(upload_id: int) -> int:
    """Match one upload against the registry; queue drafts and alerts."""
    from workers.pipeline import analyse_upload as analyse

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        result = analyse(s, rt.blobs, rt.matcher, upload_id)
    if result is None:
        return 0
    for match_id in result.new_match_ids:
        draft_notice.delay(match_id)
        notify_owner.delay(match_id)
    return len(result.new_match_ids)


@app.task(name="artwatch.draft_notice", **_RETRY)
def draft_notice(match_id: int) -> int | None:
    """Add the match to its owner's open draft for the host (or start one)."""
    from notices.drafting import DraftingBlocked, draft_for_match

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        try:
            notice = draft_for_match(s, match_id, rt.settings)
        except DraftingBlocked as exc:
            log.warning("match %s: drafting blocked: %s", match_id, exc)
            return None
        return notice.id if notice is not None else None


@app.task(name="artwatch.notify_owner", **_RETRY)
def notify_owner(match_id: int) -> bool:
    """Send the owner an instant alert, if that is what they chose."""
    from webapp.alerts import send_instant_alert

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        return bool(send_instant_alert(s, rt.blobs, rt.settings, match_id))


@app.task(name="artwatch.send_digests", **_RETRY)
def send_digests() -> int:
    """Beat entry: send daily digests that are due."""
    from webapp.alerts import send_digests as send

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        return int(send(s, rt.blobs, rt.settings, datetime.now(timezone.utc)) or 0)
