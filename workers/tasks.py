"""Thin Celery tasks: ids in, reload the record, call a domain function, store.

Every task is idempotent (the domain functions upsert by natural ids) and
exits cleanly when its record has gone. Transient failures retry with
exponential backoff and jitter, declared on the decorator; a task that still
fails after its retries is written to the dead-letter table, from where
``artwatch deadletters replay`` sends it again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import kombu.exceptions
import numpy as np
import redis.exceptions
from celery import Task
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from storage.db import session_scope
from storage.models import DeadLetter, Source, Upload, UploadStatus
from workers import metrics
from workers.app import MAINTENANCE_TIME_LIMIT_S, RETRY_BACKOFF_MAX_S, app
from workers.runtime import get_runtime

__all__ = [
    "analyse_upload",
    "backscan",
    "configured_app",
    "crawl_due_sources",
    "crawl_source",
    "decode_embedding",
    "draft_notice",
    "embed_upload",
    "embed_work",
    "encode_embedding",
    "fetch_upload",
    "notify_owner",
    "redispatch_stalled",
    "retrain_vocabulary",
    "run_followups",
    "send_digests",
    "write_snapshot",
]

log = logging.getLogger(__name__)


def configured_app(settings: Any) -> Any:
    """The Celery app configured for ``settings``, with every task registered
    (importing this module registers them): what the commands that queue or run tasks use."""
    from workers.app import configure

    return configure(settings)

# Errors worth retrying: the network, the broker or the database blinked, or
# two deliveries of one message raced on a unique key (IntegrityError: the
# rerun finds the winner's row and upserts). Anything else (a bug, a full
# disk) is dead-lettered at once; a bad image is not an error at all (the
# upload is marked failed with the reason).
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
            with contextlib.suppress(Exception):  # the count expires on its own
                counter.forget(key)
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
        with contextlib.suppress(Exception):  # the count expires on its own
            _counter(get_runtime().settings).forget(f"{task_id}:{self.request.retries}")


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
#
# The GPU -> CPU hand-off travels in the analyse_upload message, not through
# a file or the blob store. Measured: a ViT-B-32 embedding is 512 float32 =
# 2,048 bytes, 2,732 characters of base64, and the whole hand-off record
# (model key, image hash, vector) about 2.9 KB of JSON (ViT-L-14, 768 wide:
# about 4.2 KB); Redis and Celery carry that without noticing. In the message
# the vector needs no shared disk and no store round trips (a PUT and a GET
# per upload on S3), leaves nothing behind to clean up, and cannot go missing
# between the two stages: a retry, a re-delivery after a crash and a
# dead-letter replay all carry it again. What it gives up is reuse across
# uploads of the same image, which re-embed (one GPU row each).


#: How many times analyse_upload sends an upload back to the GPU stage for an
#: embedding before it gives up (dead letter, upload failed with the reason).
MAX_EMBED_REQUESTS = 3


def _model_key(settings: Any) -> str:
    from matching.signals.clip import clip_model_key

    return clip_model_key(settings.matching.clip_model, settings.matching.clip_pretrained)


def encode_embedding(settings: Any, blob_sha256: str, vector: Any) -> dict[str, str]:
    """The hand-off record: which model embedded which image, and the vector (float32, base64)."""
    raw = np.asarray(vector, dtype="<f4").tobytes()
    return {"model": _model_key(settings), "sha256": blob_sha256, "f32": base64.b64encode(raw).decode("ascii")}


def decode_embedding(settings: Any, blob_sha256: str, handoff: dict[str, Any] | None) -> np.ndarray | None:
    """The handed-over vector, if this deployment's model computed it from this very
    image (a GPU worker on another model, or an upload re-fetched since, gives None)."""
    if not handoff or handoff.get("model") != _model_key(settings) or handoff.get("sha256") != blob_sha256:
        return None
    try:
        vec = np.frombuffer(base64.b64decode(str(handoff.get("f32", "")), validate=True), dtype="<f4")
    except (ValueError, binascii.Error):
        return None
    return vec.astype(np.float32) if vec.size else None


_vectors: dict[int, Any] = {}  # process id -> WorkVectors (an index handle must not cross a fork)


def _work_vectors(settings: Any) -> Any:
    """This process's writer of works' CLIP points (the GPU stage opens the index only to write)."""
    pid = os.getpid()
    if pid not in _vectors:
        from matching.index import build_index
        from matching.index.vectors import (
            WorkVectors,
            check_vector_keys,
            settings_sparse_specs,
            settings_specs,
            settings_vector_keys,
        )
        from matching.signals.clip import RemoteEmbedder
        from storage.documents import build_document_store

        # Opened with every named vector the engines use (an index refuses other specs),
        # and only with the models that wrote them; this process writes only the CLIP points.
        check_vector_keys(build_document_store(settings), settings_vector_keys(settings.matching))
        shape = RemoteEmbedder(settings.matching.clip_model, settings.matching.clip_pretrained)
        _vectors.clear()
        _vectors[pid] = WorkVectors(build_index(settings, settings_specs(settings.matching),
                                                settings_sparse_specs(settings.matching)), shape)
    return _vectors[pid]


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


@app.task(name="artwatch.redispatch_stalled", **_RETRY)
def redispatch_stalled() -> int:
    """Beat entry: queue the fetch again for uploads whose message was lost
    (see :mod:`workers.stalled`). Returns how many were queued."""
    from workers.broker import queue_depths
    from workers.stalled import STAGE_TASKS, stalled_uploads

    rt = get_runtime()
    w = rt.settings.workers
    depths = queue_depths(app, rt.settings)
    backlog = sum(depths.get(w.routes.get(t, ""), 0) or 0 for t in STAGE_TASKS)
    if backlog > w.stall_max_backlog:
        log.info("stalled-upload sweep skipped: %d messages wait in the pipeline's queues", backlog)
        return 0
    with session_scope(rt.sessions) as s:
        ids = stalled_uploads(s, w)
    for upload_id in ids:
        fetch_upload.delay(upload_id)
    if ids:
        log.warning("re-queued %d stalled uploads (oldest %d)", len(ids), ids[0])
    return len(ids)


@app.task(name="artwatch.embed_upload", **_RETRY)
def embed_upload(upload_id: int, requests: int = 0) -> bool:
    """GPU stage: embed the upload's image in a batch, then queue its analysis with
    the vector in the message. ``requests`` counts the times the analysis asked
    again (see :data:`MAX_EMBED_REQUESTS`). A bad image is left to the analysis,
    which marks the upload failed with the decoder's reason."""
    from matching.errors import ImageError
    from workers.batching import get_clip

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        up = s.get(Upload, upload_id)
        if up is None or up.blob_sha256 is None or up.deleted_at is not None:
            return False
        sha = up.blob_sha256
    data = rt.blobs.get(sha)
    clip = get_clip(rt.settings)
    try:
        with metrics.stage("decode"):
            crop = clip.prepare(data)
    except ImageError as exc:
        log.warning("not embedded: %s", exc, extra={"upload_id": upload_id})
        analyse_upload.delay(upload_id, embedding={"model": _model_key(rt.settings), "sha256": sha,
                                                   "error": str(exc)}, requests=requests)
        return False
    with metrics.stage("embed_wait"):
        vec = clip.batcher(crop, 300.0)
    analyse_upload.delay(upload_id, embedding=encode_embedding(rt.settings, sha, vec), requests=requests)
    return True


@app.task(name="artwatch.embed_work", **_RETRY)
def embed_work(work_id: int) -> int:
    """GPU stage for a work registered where no model is loaded (``embed_stage``):
    embed each of its renderings in this process's batches and write them as the
    work's CLIP points. Idempotent (the work's points are replaced); a work
    removed meanwhile is skipped. Returns the points written."""
    from matching.decode import decode_image
    from matching.engine import WORK_MAX_SIDE, WorkRef
    from storage.models import Work
    from workers.batching import get_clip, preprocess_rgb

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        work = s.get(Work, work_id)
        if work is None:
            return 0
        ref = WorkRef(work.id, work.owner_id, work.kind.value)
        sha, name = work.blob_sha256, work.filename
    img = decode_image(rt.blobs.get(sha), name=name, max_side=WORK_MAX_SIDE)
    clip = get_clip(rt.settings)
    rows = [clip.batcher.submit(preprocess_rgb(np.asarray(r), clip.image_size)) for r in img.variants()]
    with metrics.stage("embed_wait"):
        vecs = [f.result(300.0) for f in rows]
    n = int(_work_vectors(rt.settings).register(ref, img, clip=vecs))
    log.info("work %s: %d CLIP points written", work_id, n)
    return n


@app.task(name="artwatch.analyse_upload", **_RETRY)
def analyse_upload(upload_id: int, embedding: dict[str, Any] | None = None, requests: int = 0) -> int:
    """Match one upload against the registry; queue drafts and alerts.

    With ``workers.embed_stage`` on, ``embedding`` is the GPU stage's hand-off
    (:func:`encode_embedding`) and this process never embeds: an upload that
    arrives without a usable one goes back to ``embed_upload`` and is analysed
    when it returns, at most :data:`MAX_EMBED_REQUESTS` times, after which the
    upload is dead-lettered (failed, with the reason; ``deadletters replay``
    sends it again)."""
    from registry.service import analyse_upload as analyse

    rt = get_runtime()
    vec = None
    if rt.settings.workers.embed_stage and rt.settings.matching.use_embedder:
        with session_scope(rt.sessions) as s:
            up = s.get(Upload, upload_id)
            sha = up.blob_sha256 if up is not None and up.deleted_at is None else None
        vec = decode_embedding(rt.settings, sha, embedding) if sha is not None else None
        # No image: the analysis below exits or fails the upload. A GPU stage that
        # could not decode it says so ("error"): the analysis records the reason.
        if vec is None and sha is not None and not (embedding or {}).get("error"):
            if requests >= MAX_EMBED_REQUESTS:
                got = "none" if not embedding else f"one from model {embedding.get('model')!r}"
                # Recorded with the bare upload id, so that a replay (once the GPU
                # stage is fixed) starts the round again instead of stopping at once.
                _dead_letter(analyse_upload, [upload_id], {},
                             f"no usable embedding after {requests} requests to the GPU stage (got {got}; this "
                             f"worker wants model {_model_key(rt.settings)!r}): is a GPU worker consuming queue "
                             "'embed'?", requests)
                return 0
            log.info("no embedding: sent back to the GPU stage (%d)", requests + 1, extra={"upload_id": upload_id})
            embed_upload.delay(upload_id, requests=requests + 1)
            return 0
    t0 = time.perf_counter()
    matcher = _Matcher(rt.matcher, vec)
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


@app.task(name="artwatch.backscan", **_RETRY)
def backscan(job_id: int) -> int:
    """Check one batch of stored uploads against newly registered works
    (``registry.backscan``), queue drafts and alerts for what it found, then
    the next batch. The cursor lives in the job row, so a redelivered message
    re-checks the same batch and creates no second match."""
    from registry.backscan import run_batch

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        result = run_batch(s, rt.blobs, rt.matcher, job_id)
    if result is None:
        return 0
    metrics.MATCHES.inc(len(result.new_match_ids))
    for match_id in result.new_match_ids:
        draft_notice.delay(match_id)
        notify_owner.delay(match_id)
    if result.more:
        backscan.delay(job_id)
    log.info("back-scan job %s: %d new matches%s", job_id, len(result.new_match_ids),
             ", next batch queued" if result.more else ", done")
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
    from notices.alerts import send_instant_alert

    rt = get_runtime()
    with session_scope(rt.sessions) as s:
        return bool(send_instant_alert(s, rt.blobs, rt.settings, match_id))


@app.task(name="artwatch.send_digests", **_RETRY)
def send_digests() -> int:
    """Beat entry: send daily digests that are due."""
    from notices.alerts import send_digests as send

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
