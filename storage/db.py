"""Database engine and sessions.

SQLite is the embedded default and runs in WAL mode with a busy timeout, so the
CLI, the web app and worker processes can share one file. PostgreSQL is the
distributed choice; the same models and migrations serve both.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "DatabaseUnavailable",
    "check_database",
    "make_engine",
    "make_sessionmaker",
    "session_scope",
    "shared_sessionmaker",
]


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message names it."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


_shared: dict[str, sessionmaker[Session]] = {}
_shared_lock = threading.Lock()


def shared_sessionmaker(url: str) -> sessionmaker[Session]:
    """One engine per database URL per process, for a store built without the
    composition root's sessions (a library caller, a one-off script): building
    a fresh engine each time would leave its pooled connections to the garbage
    collector."""
    with _shared_lock:
        factory = _shared.get(url)
        if factory is None:
            factory = _shared[url] = make_sessionmaker(make_engine(url))
        return factory


def _after_fork() -> None:
    # A forked child (Celery prefork) must not reuse the parent's connections.
    for factory in _shared.values():
        bind = factory.kw.get("bind")
        if bind is not None:
            bind.dispose(close=False)


with contextlib.suppress(AttributeError):  # no fork on this platform
    os.register_at_fork(after_in_child=_after_fork)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def check_database(engine: Engine) -> None:
    """Raise DatabaseUnavailable with a readable message if a query cannot run."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot reach the database at {_redact(str(engine.url))}: {reason}"
        ) from None


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
