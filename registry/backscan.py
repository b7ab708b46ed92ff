"""Back-scan: check the uploads already stored against newly registered works.

A work registered today would otherwise learn nothing about the copies
crawled yesterday. Registering (web form, API, ``works add``, ``works
import``) calls :func:`start_backscan`, which adds a :class:`WebJob` row
(kind ``"backscan"``) in the registration's transaction and, once that
commits, queues ``artwatch.backscan`` with the job id. Each task run checks
one batch of stored uploads, newest first, against those works only
(``Engine.analyse(..., work_ids=...)``: the normal candidate search with the
other works masked, so one upload costs what a normal analysis does, never a
loop over the registry), records matches through
:func:`registry.service.record_matches` (dedupe per upload x work, licensed
sites suppressed) and queues the next batch.

Resumable and idempotent: the cursor (the smallest upload id checked so far)
is stored in the job row and committed together with the batch's matches, so
a worker killed mid-batch leaves nothing behind, and the redelivered message
checks the same batch again; a re-run finds the matches already there and
creates none. The scan covers the analysed uploads that existed when the job
started (ids up to ``max_upload_id``); later ones are analysed normally, with
the new works already in the registry.

The job's state lives in ``WebJob.errors`` as one record ``{"scan": {...}}``
(work ids, ``max_upload_id``, cursor, matches found), so no migration is
needed; :func:`progress` reads it back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Match, MatchStatus, Upload, UploadStatus, WebJob, Work

if TYPE_CHECKING:
    from config.settings import Settings
    from matching import Engine as Matcher
    from storage.blobs import BlobStore

__all__ = [
    "BATCH",
    "KIND",
    "BatchResult",
    "Progress",
    "jobs_for_work",
    "progress",
    "run_batch",
    "start_backscan",
]

log = logging.getLogger(__name__)

KIND = "backscan"
#: Uploads per task run: about 10-20 s of CPU at the measured cost of an
#: analysis (docs/benchmarks.md), well inside the task time limit, and the
#: granularity of both the progress bar and the work redone after a crash.
BATCH = 100
TASK = "artwatch.backscan"


@dataclass(frozen=True)
class Progress:
    """What the work's page shows: "checked ``done`` of ``total``, found ``found``"."""

    job_id: int
    state: str
    work_ids: tuple[int, ...]
    total: int
    done: int
    found: int
    max_upload_id: int
    before_id: int


@dataclass(frozen=True)
class BatchResult:
    new_match_ids: list[int]
    more: bool


def _scan(job: WebJob) -> dict[str, Any]:
    for rec in job.errors or []:
        if isinstance(rec, dict) and isinstance(rec.get("scan"), dict):
            return dict(rec["scan"])
    return {"work_ids": [], "max_upload_id": 0, "before_id": 0, "found": 0}


def progress(job: WebJob) -> Progress:
    scan = _scan(job)
    return Progress(job.id, job.state, tuple(int(w) for w in scan.get("work_ids", [])), job.total, job.done,
                    int(scan.get("found", 0)), int(scan.get("max_upload_id", 0)), int(scan.get("before_id", 0)))


def _scannable(max_upload_id: int) -> Any:
    """Uploads a back-scan checks: analysed (so their image decoded), kept, up to the start."""
    return (Upload.id <= max_upload_id, Upload.status == UploadStatus.ANALYSED,
            Upload.blob_sha256.is_not(None), Upload.deleted_at.is_(None))


def start_backscan(session: Session, settings: Settings | None, owner_id: int,
                   work_ids: Sequence[int]) -> WebJob | None:
    """Add the back-scan job for ``work_ids`` (one owner's) and queue it once the session commits.

    None when no upload is stored yet (nothing to scan, no job). ``settings``
    None adds the row only (a caller that runs :func:`run_batch` itself, as
    the tests and the benchmark do)."""
    max_id = int(session.scalar(select(func.max(Upload.id))) or 0)
    total = int(session.scalar(select(func.count(Upload.id)).where(*_scannable(max_id))) or 0)
    if not total or not work_ids:
        return None
    ids = sorted({int(w) for w in work_ids})
    job = WebJob(owner_id=owner_id, kind=KIND, state="queued", total=total, done=0,
                 errors=[{"scan": {"work_ids": ids, "max_upload_id": max_id, "before_id": max_id + 1,
                                   "found": 0}}])
    session.add(job)
    session.flush()
    if settings is not None:
        _queue_after_commit(session, settings, job.id)
    return job


def _queue_after_commit(session: Session, settings: Settings, job_id: int) -> None:
    from sqlalchemy import event

    def queue(_session: Session) -> None:
        try:
            queue_batch(settings, job_id)
        except Exception:  # the work is registered; `artwatch works backscan` queues it again
            log.exception("back-scan job %s: could not queue", job_id)

    event.listen(session, "after_commit", queue, once=True)


def queue_batch(settings: Settings, job_id: int) -> None:
    """Send the job's next batch to the workers (queue ``analyse``)."""
    from registry.root import queue_task

    queue_task(settings, TASK, job_id)


def run_batch(session: Session, blobs: BlobStore, matcher: Matcher, job_id: int,
              batch: int = BATCH) -> BatchResult | None:
    """Check the job's next ``batch`` uploads; None when the job is gone or finished.

    The caller commits: the matches and the moved cursor go in one
    transaction, which is what makes a re-run after a crash harmless."""
    from matching.errors import ImageError
    from registry.service import record_matches
    from storage.blobs import BlobStoreError

    job = session.get(WebJob, job_id, with_for_update=True)
    if job is None or job.kind != KIND or job.state in ("done", "failed"):
        return None
    scan = _scan(job)
    max_id, before = int(scan["max_upload_id"]), int(scan["before_id"])
    alive = [int(w) for w in scan["work_ids"] if session.get(Work, int(w)) is not None]
    if not alive:
        _finish(job, scan, "done")
        return BatchResult([], False)
    job.state = "running"
    ups = list(session.scalars(select(Upload).where(*_scannable(max_id), Upload.id < before)
                               .order_by(Upload.id.desc()).limit(batch + 1)))
    more = len(ups) > batch  # one more looked at, so the last batch knows it is the last
    ups = ups[:batch]
    created: list[int] = []
    for up in ups:
        assert up.blob_sha256 is not None  # _scannable
        try:
            data = blobs.get(up.blob_sha256)
            candidates = matcher.analyse(data, name=up.image_url or f"upload {up.id}", work_ids=alive)
        except (ImageError, BlobStoreError) as exc:  # decoded once; a blob gone since is skipped, not fatal
            log.warning("back-scan job %s: upload %s skipped: %s", job_id, up.id, exc)
            continue
        created += record_matches(session, up, candidates)
    if ups:
        scan["before_id"] = ups[-1].id
    scan["found"] = _found(session, alive, max_id)
    job.done = min(job.total, job.done + len(ups))
    if more:
        job.errors = [{"scan": scan}]
    else:
        _finish(job, scan, "done")
    return BatchResult(created, more)


def _finish(job: WebJob, scan: dict[str, Any], state: str) -> None:
    job.errors = [{"scan": scan}]
    job.state = state
    job.done = job.total
    job.finished_at = datetime.now(UTC)


def jobs_for_work(session: Session, work: Work, limit: int = 50) -> list[Progress]:
    """The back-scans that cover ``work``, newest first (its owner's jobs only).

    ``found`` counts this work's matches only (a job started by an import
    covers several works)."""
    from dataclasses import replace

    jobs = session.scalars(select(WebJob).where(WebJob.owner_id == work.owner_id, WebJob.kind == KIND)
                           .order_by(WebJob.id.desc()).limit(limit)).all()
    out = []
    for p in map(progress, jobs):
        if work.id in p.work_ids:
            shared = len(p.work_ids) > 1
            out.append(replace(p, found=_found(session, [work.id], p.max_upload_id)) if shared else p)
    return out


def _found(session: Session, work_ids: Sequence[int], max_upload_id: int) -> int:
    return int(session.scalar(
        select(func.count(Match.id)).where(Match.work_id.in_(list(work_ids)), Match.upload_id <= max_upload_id,
                                           Match.status != MatchStatus.SUPPRESSED)) or 0)
