"""The one composition root: what every entry point shares, built from the settings.

The command line (``workers.cli.CliContext``), the web app
(``webapp.app.create_app``), the workers (``workers.runtime.get_runtime``) and
the embedded job (``workers.run``) each hold one :class:`Services`, built by
:meth:`Services.build` from the settings their entry point loaded. Every part
is built on first use, so ``artwatch --help`` or ``works list`` opens no
blob store and loads no engine; parts a caller already has (tests, the web app
served by ``artwatch run``) are passed in and used as they are.

After a fork a SQLAlchemy pool or a model must not be shared:
:meth:`Services.for_this_process` gives the child a fresh one.

The task queue (the Celery app and the maintenance hook) lives in ``workers``;
this module is the one place in ``registry`` that reaches it, and only its
queue side (``workers.app``, ``workers.maintenance``), never the tasks:
:attr:`Services.matcher`'s maintenance hook and :func:`queue_embedding`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.blobs import BlobStore

if TYPE_CHECKING:
    from matching import Engine as Matcher
    from matching.store import FeatureStore
    from storage.documents import DocumentStore

__all__ = ["Services", "queue_embedding", "queue_health", "queue_task"]


def queue_task(settings: Settings | None, name: str, *args: object, bounded: bool = False) -> None:
    """Send task ``name`` (routed like every task by ``[workers.routes]``).

    With ``settings`` the task app is configured for them first, unless it is
    already (a command line process); without, it is the app as this process
    configured it. ``bounded`` (a person waiting on a page): one short
    connection attempt first and no publisher retries, so a broker that is
    down raises at once instead of after a minute.
    """
    from workers.app import app, configure

    if settings is not None and app.conf.get("artwatch_settings") is not settings:
        configure(settings)
    if bounded:
        from workers.broker import check_broker

        check_broker(app, settings if settings is not None else app.conf["artwatch_settings"])
        app.send_task(name, args=list(args), retry=False)
        return
    app.send_task(name, args=list(args))


def queue_health(settings: Settings) -> dict[str, Any]:
    """Live workers and queue lengths, from the same checks as ``artwatch status``.

    With Redis: a Celery ping with a one-second timeout and ``LLEN`` per queue;
    with the folder broker: the workers' heartbeat files and message files. A
    broker that is down is reported (``error``), not raised.
    """
    from workers.app import QUEUES, configure
    from workers.broker import check_broker, in_flight, queue_depths, worker_liveness

    broker = "embedded (folder)" if settings.embedded_broker else "redis"
    try:
        app = configure(settings)
        # One bounded connection attempt first: the ping and LLENs below would
        # each retry against a broker that is down.
        check_broker(app, settings)
        workers = worker_liveness(app, settings)
        queues = queue_depths(app, settings)
        unacked = in_flight(app, settings)
    except Exception as exc:  # noqa: BLE001 - the caller shows the broker's trouble, it does not fail
        return {"error": str(exc), "workers": [], "queues": {q: None for q in QUEUES}, "in_flight": None,
                "broker": broker}
    return {"error": "", "workers": workers, "queues": queues, "in_flight": unacked, "broker": broker}


def queue_embedding(settings: Settings | None, work_id: int) -> None:
    """Queue ``work_id``'s CLIP embedding on the GPU stage (``artwatch.embed_work``,
    routed like every task by ``[workers.routes]``; see :func:`queue_task`)."""
    queue_task(settings, "artwatch.embed_work", work_id)


@dataclass(eq=False)
class Services:
    """Settings, the SQL engine, sessions, the blob store, the shared stores and the matcher of one process.

    Build it with :meth:`build`; read the parts as attributes. The matcher
    loads lazily (processes that never analyse load no model) and gets the
    maintenance hook, so a due retrain or snapshot is queued for a worker
    instead of running in a request or a query (``workers.maintenance``).
    """

    settings: Settings
    _db: SqlEngine | None = field(default=None, repr=False)
    _sessions: sessionmaker[Session] | None = field(default=None, repr=False)
    _blobs: BlobStore | None = field(default=None, repr=False)
    _matcher: Matcher | None = field(default=None, repr=False)
    _features: FeatureStore | None = field(default=None, repr=False)
    _documents: DocumentStore | None = field(default=None, repr=False)
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        sessions: sessionmaker[Session] | None = None,
        blobs: BlobStore | None = None,
        matcher: Matcher | None = None,
    ) -> Services:
        """The services for ``settings``; any part passed in is used instead of built."""
        db = None
        if sessions is not None:
            bind = sessions.kw.get("bind")
            db = bind if isinstance(bind, SqlEngine) else None
        return cls(settings=settings, _db=db, _sessions=sessions, _blobs=blobs, _matcher=matcher)

    @property
    def db(self) -> SqlEngine:
        """The SQL engine (its connection pool); built on first use."""
        if self._db is None:
            from storage.db import make_engine

            self._db = make_engine(self.settings.resolved_database_url())
        return self._db

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            from storage.db import make_sessionmaker

            self._sessions = make_sessionmaker(self.db)
        return self._sessions

    @property
    def blobs(self) -> BlobStore:
        """The blob store the settings name (``[blobs]``: a folder or an S3 bucket)."""
        if self._blobs is None:
            from storage.blobs import build_blob_store

            self._blobs = build_blob_store(self.settings)
        return self._blobs

    @property
    def matcher(self) -> Matcher:
        """The matching engine; a due retrain or snapshot goes to the maintenance
        queue when a worker will take it (``workers.maintenance``)."""
        if self._matcher is None:
            from matching import build_engine
            from workers.maintenance import maintenance_hook

            # A searching or registering process never writes a snapshot or
            # retrains during the call: it queues the maintenance task.
            self._matcher = build_engine(self.settings, maintenance=maintenance_hook(self.settings),
                                         feature_store=self.features, documents=self.documents)
        return self._matcher

    @property
    def matcher_loaded(self) -> bool:
        return self._matcher is not None

    @property
    def features(self) -> FeatureStore:
        """The local-feature registry ``[shared] kind`` names: ``DATA_DIR/features``,
        or tables through :attr:`sessions` with arrays in :attr:`blobs`."""
        if self._features is None:
            from matching.store import build_feature_store

            if self.settings.shared.kind == "folder":
                self._features = build_feature_store(self.settings)
            else:
                self._features = build_feature_store(self.settings, sessions=self.sessions, blobs=self.blobs)
        return self._features

    @property
    def documents(self) -> DocumentStore:
        """The small shared documents (calibration, host override, generated secret key):
        DATA_DIR files, or the database's ``shared_documents`` table."""
        if self._documents is None:
            from storage.documents import build_document_store

            if self.settings.shared.kind == "folder":
                self._documents = build_document_store(self.settings)
            else:
                self._documents = build_document_store(self.settings, self.sessions)
        return self._documents

    def for_this_process(self) -> Services:
        """These services, or fresh ones when this process is a fork of the one that built them.

        The parent's pool is dropped without closing its connections (they are
        the parent's); the child builds its own engine, blob store and matcher.
        """
        if self.pid == os.getpid():
            return self
        if self._db is not None:
            self._db.dispose(close=False)
        return Services.build(self.settings)

    def dispose(self) -> None:
        """Close the connection pool (the next use opens a new one)."""
        if self._db is not None:
            self._db.dispose()
