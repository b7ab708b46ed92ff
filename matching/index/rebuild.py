"""Rebuild the matching index from the database (``artwatch index rebuild``).

The database is the system of record: every ``works`` row names its image by
SHA-256 in the blob store. Rebuilding re-registers each work with the engine
(which recomputes every signal and rewrites its index entries), forgets works
the engine knows but the database does not, and finally lets the engine
retrain what it learns from the whole registry (the local-feature
vocabulary), when it has such a step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from matching.errors import ImageError
from storage.blobs import BlobStore, BlobStoreError
from storage.models import Work

__all__ = ["RebuildReport", "rebuild_index"]

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    registered: int = 0
    removed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    #: Works indexed without CLIP points because this engine loads no model
    #: (``workers.embed_stage``): the caller queues their embedding on the GPU stage.
    embed_later: list[int] = field(default_factory=list)


def rebuild_index(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    engine: Any,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildReport:
    """Make ``engine``'s index hold exactly the works in the database.

    ``engine`` is a :class:`matching.Engine` (anything with ``register`` and
    ``unregister``). A work whose blob is missing or unreadable is reported
    in ``failed`` and left out; the others are still indexed.
    """
    from matching import WorkRef

    with sessions() as s:
        rows = [(w.id, w.owner_id, w.kind.value, w.blob_sha256, w.filename)
                for w in s.scalars(select(Work).order_by(Work.id))]
    report = RebuildReport()
    known = set(_known_work_ids(engine))
    wanted = {r[0] for r in rows}
    for wid in sorted(known - wanted):
        engine.unregister(wid)
        report.removed += 1
    for i, (wid, owner_id, kind, sha, filename) in enumerate(rows, 1):
        try:
            data = blobs.get(sha)
            engine.register(WorkRef(work_id=wid, owner_id=owner_id, kind=kind), data)
            report.registered += 1
            if getattr(engine, "defers_clip", False):
                report.embed_later.append(wid)
        except (ImageError, BlobStoreError) as exc:
            log.warning("work %s (%s): %s", wid, filename, exc)
            report.failed.append((wid, f"{filename}: {exc}"))
            engine.unregister(wid)
        if progress is not None:
            progress(i, len(rows))
    retrain = getattr(engine, "retrain", None)
    if callable(retrain) and rows:
        retrain()
    return report


def _known_work_ids(engine: Any) -> list[int]:
    index = getattr(engine, "index", None)
    ids = getattr(index, "work_ids", None)
    if callable(ids):
        ids = ids()
    return [int(i) for i in ids] if ids is not None else []
