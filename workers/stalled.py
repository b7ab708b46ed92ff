"""Pending uploads whose queue message was lost, found and queued again.

Redis can lose a message outright: kombu pops it from the queue (BRPOP) and
only then records it as unacked, so a worker SIGKILLed in between (or while
the reply still sits in its socket) leaves no copy for the visibility timeout
to redeliver. A crawler killed between creating uploads and queueing their
fetches loses them the same way. The database is the record of what is still
to do, so the beat's sweep (``artwatch.redispatch_stalled``) looks there: an
upload still pending ``workers.stall_after_s`` after it was created, or after
the sweep last queued it, gets its fetch queued again. The fetch is
idempotent and queues whichever stage comes next, so the upload resumes where
it was lost. After ``workers.max_redispatches`` re-queues it is dead-lettered
instead (still pending, for ``artwatch deadletters replay``). While the
pipeline's queues hold a backlog (``workers.stall_max_backlog``) the sweep
waits: an old pending upload is then most likely still queued.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import WorkersSettings
from storage.models import DeadLetter, Upload, UploadStatus

__all__ = ["FETCH_TASK", "STAGE_TASKS", "SWEEP_LIMIT", "stalled_uploads"]

FETCH_TASK = "artwatch.fetch_upload"
#: The tasks an upload passes through; while their queues hold more than
#: ``workers.stall_max_backlog`` messages the sweep waits (the upload is most
#: likely queued behind them, not lost).
STAGE_TASKS = (FETCH_TASK, "artwatch.embed_upload", "artwatch.analyse_upload")
#: Uploads looked at per sweep, oldest first; the next sweep takes the rest.
SWEEP_LIMIT = 1000


def stalled_uploads(session: Session, workers: WorkersSettings, *, now: datetime | None = None,
                    limit: int = SWEEP_LIMIT) -> list[int]:
    """Mark the stalled pending uploads as re-queued (or dead-letter those
    re-queued too often) and return the ids whose fetch the caller queues,
    after the session commits."""
    if workers.stall_after_s <= 0:
        return []
    now = now or datetime.now(UTC)
    last = func.coalesce(Upload.redispatched_at, Upload.created_at)
    q = (select(Upload)
         .where(Upload.status == UploadStatus.PENDING, Upload.deleted_at.is_(None),
                Upload.redispatches <= workers.max_redispatches,
                last < now - timedelta(seconds=workers.stall_after_s))
         .order_by(last, Upload.id).limit(limit)
         .with_for_update(skip_locked=True))  # PostgreSQL: two sweeps never take one row
    queued: list[int] = []
    for up in session.scalars(q):
        up.redispatches += 1
        up.redispatched_at = now
        if up.redispatches > workers.max_redispatches:
            session.add(DeadLetter(
                task=FETCH_TASK, args=[up.id], kwargs={}, tries=up.redispatches,
                error=f"still pending after {workers.max_redispatches} re-queues by the stalled-upload sweep "
                      f"({workers.stall_after_s} s apart): are workers consuming queues fetch, analyse (and embed)?"))
        else:
            queued.append(up.id)
    session.flush()
    return queued
