"""Per-process resources: database sessions, the blob store and the matcher.

Built once per process from the settings the entry point loaded, and rebuilt
after a fork (a SQLAlchemy pool or a model must not be shared across
processes). The matcher loads lazily, so processes that never analyse (web,
crawlers) never load a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.blobs import BlobStore, build_blob_store
from storage.db import make_engine, make_sessionmaker

if TYPE_CHECKING:
    from matching import Engine as Matcher

__all__ = ["Runtime", "get_runtime", "set_runtime_settings"]


@dataclass
class Runtime:
    settings: Settings
    db: SqlEngine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    _matcher: Matcher | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        db = make_engine(settings.resolved_database_url())
        return cls(settings=settings, db=db, sessions=make_sessionmaker(db), blobs=build_blob_store(settings))

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            from matching import build_engine
            from workers.maintenance import maintenance_hook

            # A searching process never writes a snapshot or retrains during a
            # query: it queues the maintenance task (workers.maintenance).
            self._matcher = build_engine(self.settings, maintenance=maintenance_hook(self.settings))
        return self._matcher


_settings: Settings | None = None
_runtime: Runtime | None = None
_pid: int | None = None


def set_runtime_settings(settings: Settings) -> None:
    """Called by the entry point; workers inherit it across fork."""
    global _settings, _runtime
    _settings = settings
    _runtime = None


def get_runtime() -> Runtime:
    global _runtime, _pid, _settings
    if _runtime is None or _pid != os.getpid():
        if _settings is None:
            from config.settings import load_settings

            _settings = load_settings()
        if _runtime is not None:
            _runtime.db.dispose(close=False)
        _runtime = Runtime.build(_settings)
        _pid = os.getpid()
    return _runtime
