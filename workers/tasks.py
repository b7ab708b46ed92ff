"""Thin Celery tasks: ids in, reload the record, call a domain function, store.

Every task is idempotent (the domain functions upsert by natural ids) and
exits cleanly when its record has gone. Transient failures retry with
exponential backoff and jitter, declared on the decorator; a task that still
fails after its retries is written to the dead-letter table, from where
``artwatch deadletters replay`` sends it again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from celery import Task
from sqlalchemy import select

from storage.db import session_scope
from storage.models import DeadLetter, Source, Upload, UploadStatus
from workers import metrics
from workers.app import MAINTENANCE_TIME_LIMIT_S, RETRY_BACKOFF_MAX_S, app
from workers.runtime import get_runtime

__all__ = [
    "analyse_upload",
    "crawl_due_sources",
    "crawl_source",
    "draft_notice",
    "embed_upload",
    "embedding_path",
    "fetch_upload",
    "notify_owner",
    "retrain_vocabulary",
    "run_followups",
    "send_digests",
    "write_snapshot",
]

log = logging.getLogger(__name__)

# Errors worth retrying: the network, the broker or the database blinked, or
# two deliveries of one message raced on a unique key (IntegrityError: the
# rerun finds the winner's row and upserts). Anything else (a bug, a full
# disk) is dead-lettered at once; a bad image is not an error at all (the
# upload is marked failed with the reason).
import httpx
import kombu.exceptions
import redis.exceptions
from sqlalchemy.exc import IntegrityError, OperationalError

TRANSIENT: tuple[type[BaseException], ...] = (
    httpx.TransportError, OperationalError, IntegrityError, ConnectionError, TimeoutError,
    kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)
try:
    from crawler.errors import TransientFetchError

    TRANSIENT += (TransientFetchError,)
except ImportError:  # pragma: no cover - the crawler is part of the package
    pass

# Tasks whose first argument is an upload id: a dead letter marks the upload
# failed (with the reason) so it is not silently pending forever. fetch is not
# among them: a fetch that failed for good (a full blob store) leaves the
# upload pending with no blob, ready for `artwatch deadletters replay`.
_UPLOAD_TASKS = {"artwatch.analyse_upload", "artwatch.embed_upload"}


def _dead_letter(task: Task, args: Any, kwargs: Any, error: str, tries: int) -> None:
    try:
        rt = get_runtime()
        with session_scope(rt.sessions) as s:
            s.add(DeadLetter(task=task.name, args=list(args or []), kwargs=dict(kwargs or {}),
                             error=error, tries=tries))
            if task.name in _UPLOAD_TASKS and args:
                up = s.get(Upload, int(args[0]))
                if up is not None and up.status == UploadStatus.PENDING:
                    up.status = UploadStatus.FAILED
                    up.error = f"dead-lettered after {tries} tries: {error}"
                    up.analysed_at = datetime.now(UTC)
    except Exception:  # the database itself may be what failed
        log.exception("could not record dead letter for %s%r", task.name, args)
    metrics.TASKS.labels(task.name, "dead_letter").inc()
    log.error("dead letter: %s%r: %s", task.name, tuple(args or ()), error,
              extra=_ids(task.name, args, task.request.id))


def _ids(name: str, args: Any, task_id: str | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"task_id": task_id}
    if args and name in (*_UPLOAD_TASKS, "artwatch.fetch_upload"):
        extra["upload_id"] = args[0]
    elif args and name == "artwatch.crawl_source":
        extra["source_id"] = args[0]
    elif args and name in ("artwatch.draft_notice", "artwatch.notify_owner"):
        extra["match_id"] = args[0]
    return extra


class ArtwatchTask(Task):  # type: ignore[misc]
    """Counts deliveries (poison messages), times tasks, dead-letters failures.

    A message delivered more than ``workers.max_deliveries`` times without
    finishing (its worker died each time) is recorded in the dead-letter
    table and acked instead of run again. A task that raises after its
    retries is recorded there too; ``artwatch deadletters replay`` sends
    either kind again.
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        if req.called_directly or req.is_eager or not req.id:
            return super().__call__(*args, **kwargs)
        # From here on we run inside the worker's tracer, which has pushed the
        # real request: call run() (autoretry wraps it), as Celery documents
        # for custom __call__, so self.request stays the delivered message.
        settings = get_runtime().settings
        key = f"{req.id}:{req.retries}"
        try:
            counter = _counter(settings)
            n = counter.incr(key)
        except Exception as exc:  # noqa: BLE001 - counting must not stop the work
            log.warning("cannot count deliveries of %s: %s", self.name, exc)
            counter, n = None, 1
        if n > settings.workers.max_deliveries:
            metrics.ERRORS.labels("poison").inc()
            _dead_letter(self, args, kwargs,
                         f"poison message: delivered {n} times without finishing (its worker died each time)",
                         n - 1)
            if counter is not None:
                counter.forget(key)
            return None
        t0 = time.perf_counter()
        result = self.run(*args, **kwargs)
        metrics.TASKS.labels(self.name, "ok").inc()
        metrics.STAGE_SECONDS.labels(self.name.removeprefix("artwatch.")).observe(time.perf_counter() - t0)
        if counter is not None:
            try:
                counter.forget(key)
            except Exception:  # noqa: BLE001, S110 - the count expires on its own
                pass
        return result

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics.TASKS.labels(self.name, "retry").inc()
        metrics.ERRORS.labels(type(exc).__name__).inc()
        log.warning("%s: retry %d: %s", self.name, self.request.retries + 1, exc,
                    extra=_ids(self.name, args, task_id))
        self._forget(task_id)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics.ERRORS.labels(type(exc).__name__).inc()
        _dead_letter(self, args, kwargs, f"{type(exc).__name__}: {exc}", self.request.retries + 1)
        self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        try:
            _counter(get_runtime().settings).forget(f"{task_id}:{self.request.retries}")
        except Exception:  # noqa: BLE001, S110 - the count expires on its own
            pass


def _counter(settings: Any) -> Any:
    from workers.deliveries import delivery_counter

    return delivery_counter(settings)


# Retries declared on every task: exponential backoff (2, 4, 8, ... s, capped)
# with full jitter so that a fleet of workers does not hammer a recovering
# Redis or database in lockstep; five retries span about a minute on average.
_RETRY: dict[str, Any] = {
    "base": ArtwatchTask,
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": RETRY_BACKOFF_MAX_S,
    "retry_jitter": True,
    "max_retries": 5,
}


# ------------------------------------------------------------ embeddings


def _model_key(settings: Any) -> str:
    m = settings.matching
    tag = m.clip_pretrained or "random"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{m.clip_model}-{tag}")


def embedding_path(settings: Any, blob_sha256: str) -> Path:
    """Where the CLIP embedding of one image blob lives (keyed by content and
    model, so uploads sharing an image share it and a rerun overwrites it)."""
    root = Path(settings.blob_dir())
    return root / "embeddings" / _model_key(settings) / blob_sha256[:2] / f"{blob_sha256}.f32"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Matcher:
    """Times the matcher's analysis and hands it the GPU stage's embedding
    (``Engine.analyse(..., embedding=...)``)."""

    def __init__(self, matcher: Any, embedding: np.ndarray | None) -> None:
        self._m = matcher
        self._embedding = embedding
        self.elapsed = 0.0

    def analyse(self, data: bytes, **kwargs: Any) -> Any:
        if self._embedding is not None:
            kwargs["embedding"] = self._embedding
        t0 = time.perf_counter()
        try:
            return self._m.analyse(data, **kwargs)
        finally:
            self.elapsed += time.perf_counter() - t0
            metrics.STAGE_SECONDS.labels("analyse").observe(self.elapsed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)


@app.task(name="artwatch.crawl_source", **_RETRY)
def crawl_source(source_id: int) -> int:
    """Poll one source from its saved cursor and queue a fetch per new image."""
    from crawler.limits import host_limits
    from crawler.service import build_client, poll_source

    rt = get_runtime()
    with build_client(rt.settings.crawler, host_limits(rt.settings)) as client, session_scope(rt.sessions) as s:
        source = s.get(Source, source_id)
        if source is None or not source.enabled:
            return 0
        new_ids = poll_source(s, source, client, rt.settings.crawler)
    for upload_id in new_ids:
        fetch_upload.delay(upload_id)
    return len(new_ids)


@app.task(name="artwatch.crawl_due_sources", **_RETRY)
def crawl_due_sources() -> int:
    """Beat entry: queue a crawl for every enabled polling source that is due.

    Streaming sources (Wikimedia, Bluesky) are left to their long-lived
    consumer (`artwatch crawl --stream NAME`): polling them too would race it
    on the same cursor.
    """
    from crawler.service import SOURCE_KINDS

    rt = get_runtime()
    now = datetime.now(UTC)
    due: list[int] = []
    with session_scope(rt.sessions) as s:
        for src in s.scalars(select(Source).where(Source.enabled.is_(True))):
            kind = SOURCE_KINDS.get(src.kind)
            if kind is not None and kind.streaming:
                continue
            last = src.last_success_at
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=UTC)
            if last is None or now - last >= timedelta(seconds=src.poll_seconds):
                due.append(src.id)
    for sid in due:
        crawl_source.delay(sid)
    return len(due)


@app.task(name="artwatch.fetch_upload", **_RETRY)
def fetch_upload(upload_id: int) -> bool:
    """Download an upload's image as evidence, then queue its analysis."""
    from crawler.fetch import SafeFetcher
    from crawler.limits import host_limits
    from crawler.service import build_client
    from crawler.service import fetch_upload as fetch

    rt = get_runtime()
    with build_client(rt.settings.crawler, host_limits(rt.settings)) as client:
        fetcher = SafeFetcher(client, rt.settings.crawler)
        with session_scope(rt.sessions) as s:
            ready = fetch(s, rt.blobs, upload_id, fetcher)
    if ready:
        if rt.settings.workers.embed_stage:
            embed_upload.delay(upload_id)
        else:
            analyse_upload.delay(upload_id)
    log.info("fetched" if ready else "not fetched", extra={"upload_id": upload_id})
    return ready


@app.task(name="artwatch.embed_upload", **_RETRY)
def embed_upload(upload_id: int) -> bool:
    """GPU stage: embed the upload's image in a batch, then queue its analysis.

    Idempotent: an embedding already on disk is reused. A bad image is left to
    the analysis, which marks the upload failed with the decoder's reason."""
    from matching.errors import ImageError
    from workers.batching import get_clip

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        up = s.get(Upload, upload_id)
        if up is None or up.blob_sha256 is None or up.deleted_at is not None:
            return False
        sha = up.blob_sha256
    path = embedding_path(rt.settings, sha)
    if not path.exists():
        data = rt.blobs.get(sha)
        clip = get_clip(rt.settings)
        try:
            with metrics.stage("decode"):
                crop = clip.prepare(data)
        except ImageError as exc:
            log.warning("not embedded: %s", exc, extra={"upload_id": upload_id})
            analyse_upload.delay(upload_id)
            return False
        with metrics.stage("embed_wait"):
            vec = clip.batcher(crop, 300.0)
        _write_atomic(path, np.asarray(vec, np.float32).tobytes())
    analyse_upload.delay(upload_id)
    return True


@app.task(name="artwatch.analyse_upload", **_RETRY)
def analyse_upload(upload_id: int) -> int:
    """Match one upload against the registry; queue drafts and alerts."""
    from workers.pipeline import analyse_upload as analyse

    rt = get_runtime()
    embedding = None
    if rt.settings.workers.embed_stage:
        with session_scope(rt.sessions) as s:
            up = s.get(Upload, upload_id)
            sha = up.blob_sha256 if up is not None else None
        if sha is not None:
            try:
                embedding = np.frombuffer(embedding_path(rt.settings, sha).read_bytes(), np.float32)
            except FileNotFoundError:
                embedding = None  # the engine embeds on its own, if it embeds at all
    t0 = time.perf_counter()
    matcher = _Matcher(rt.matcher, embedding)
    with session_scope(rt.sessions) as s:
        result = analyse(s, rt.blobs, matcher, upload_id)  # type: ignore[arg-type]  # duck-typed Engine
    # Everything but the matcher: loading the upload, upserting matches, commit.
    metrics.STAGE_SECONDS.labels("database").observe(max(0.0, time.perf_counter() - t0 - matcher.elapsed))
    if result is None:
        return 0
    metrics.MATCHES.inc(len(result.new_match_ids))
    log.info("analysed: %d new matches", len(result.new_match_ids), extra={"upload_id": upload_id})
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
        return int(send(s, rt.blobs, rt.settings, datetime.now(UTC)) or 0)


@app.task(name="artwatch.run_followups", **_RETRY)
def run_followups() -> int:
    """Beat entry: re-check sent notices whose follow-up is due (removed or still online)."""
    from crawler.limits import host_limits
    from crawler.service import build_client
    from notices.sending import run_followups as followups

    rt = get_runtime()
    with build_client(rt.settings.crawler, host_limits(rt.settings)) as client, session_scope(rt.sessions) as s:
        return len(followups(s, client, rt.settings))


# ------------------------------------------------------------ maintenance


def _maintain(job: Any) -> bool:
    from workers.maintenance import clear_pending, cluster_lock

    rt = get_runtime()
    # The index first: a process that starts with no snapshot finds one due,
    # and the pending flag, still set, keeps it from queueing a second task.
    index = rt.matcher.index
    clear_pending(rt.settings, job)
    with cluster_lock(rt.settings):
        done = index.run_maintenance(job)
    log.info("maintenance %s: %s", job, "done" if done else "nothing due")
    return done


@app.task(name="artwatch.retrain_vocabulary", time_limit=MAINTENANCE_TIME_LIMIT_S, **_RETRY)
def retrain_vocabulary() -> bool:
    """Retrain the local-feature vocabulary if the registry still calls for it.

    Queued by a registration that crossed a doubling (``workers.maintenance``);
    other processes switch to the new vocabulary from its snapshot on their
    next query. A second task queued meanwhile finds nothing due."""
    return _maintain("retrain")


@app.task(name="artwatch.write_snapshot", time_limit=MAINTENANCE_TIME_LIMIT_S, **_RETRY)
def write_snapshot() -> bool:
    """Write the postings snapshot of the current vocabulary, covering the
    journal so far, unless a current one covers it already."""
    return _maintain("snapshot")
