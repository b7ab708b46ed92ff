"""The feature store as database rows plus blob-store objects (``[shared] kind = "services"``).

Machines that share nothing but the database and the blob store share the
registry through this store:

- ``feature_works``: one row per work naming the blob (npz bytes,
  :func:`matching.store.work_to_bytes`) that holds its arrays;
- ``feature_changes``: the change feed, one row per line; a reader's cursor is
  the last row id it has applied. Appends take a transaction-scoped advisory
  lock on PostgreSQL (``pg_advisory_xact_lock``) before inserting, so ids are
  assigned and committed in the same order: a reader that has seen id ``n``
  never meets a smaller id committing later. SQLite serialises writers anyway;
- ``feature_vocabs``: the published vocabularies (the current one has the
  highest id), inserted in the same transaction as their ``vocab`` line;
- ``feature_snapshots``: snapshot pointers (the current one of a vocabulary
  has the highest id) with their arrays' blob keys. A process restores a
  snapshot by downloading its arrays into ``cache_dir`` (a per-machine cache,
  not shared state; files named by their SHA-256, checked on download) and
  memory-mapping them from there.

Locks: on PostgreSQL, session advisory locks (``pg_try_advisory_lock``) on a
connection of their own, held for the lock's life, so they are exclusive
across machines; names map to stable bigint keys (:func:`lock_key`). On
SQLite, which is one machine's database, they are portalocker file locks in
``lock_dir`` beside it.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, select, text

from matching.features import StoredWork
from matching.store import Locked, thumbs_from_bytes, work_from_bytes, work_to_bytes
from storage.blobs import BlobNotFound, sha256_hex
from storage.db import session_scope
from storage.models import FeatureChange, FeatureSnapshot, FeatureVocab, FeatureWork

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from storage.blobs import BlobStore

__all__ = ["SqlFeatureStore", "lock_key"]

U8 = npt.NDArray[np.uint8]

#: The advisory lock appends take for their transaction (ids commit in order).
_FEED_LOCK = "feed-append"


def lock_key(name: str) -> int:
    """The PostgreSQL advisory-lock key (a signed bigint) of lock ``name``; the
    same on every machine and release."""
    digest = hashlib.sha256(f"artwatch.registry.{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _line(row: FeatureChange) -> str:
    if row.op == "vocab":
        return f"vocab {row.vocab} {row.works or 0}"
    return f"{row.op} {row.work_id}"


def _row(line: str) -> FeatureChange:
    op, *args = line.split()
    if op in ("add", "del") and len(args) == 1:
        return FeatureChange(op=op, work_id=int(args[0]))
    if op == "vocab" and len(args) == 2:
        return FeatureChange(op=op, vocab=args[0], works=int(args[1]))
    raise ValueError(f"not a change-feed line: {line!r}")


class SqlFeatureStore:
    """Feature-registry rows through ``sessions``; arrays in ``blobs``."""

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, *, cache_dir: Path,
                 lock_dir: Path | None = None) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.cache_dir = cache_dir
        bind = sessions.kw.get("bind")
        if bind is None:
            raise ValueError("the SQL feature store needs a sessionmaker bound to an engine")
        self.engine: Engine = bind
        self.postgres = self.engine.dialect.name == "postgresql"
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if lock_dir is None and database and database != ":memory:":
            lock_dir = Path(database).resolve().parent / "feature-locks"  # beside the database file
        #: Where SQLite's locks live (None: PostgreSQL, or an in-memory SQLite that cannot lock).
        self.lock_dir = lock_dir

    # ---- work arrays

    def put_work(self, work: StoredWork) -> None:
        data = work_to_bytes(work)
        key = self.blobs.put(data)
        old: str | None = None
        with session_scope(self.sessions) as s:
            row = s.get(FeatureWork, int(work.work_id), with_for_update=self.postgres)
            if row is None:
                s.add(FeatureWork(work_id=int(work.work_id), blob_key=key, size=len(data)))
            else:
                old = row.blob_key
                row.blob_key, row.size = key, len(data)
        if old is not None and old != key:
            self._delete_blob(old)

    def _work_blob(self, work_id: int) -> bytes | None:
        with self.sessions() as s:
            key = s.scalar(select(FeatureWork.blob_key).where(FeatureWork.work_id == int(work_id)))
        if key is None:
            return None
        try:
            return self.blobs.get(key)
        except BlobNotFound:
            return None  # removed (or replaced) since the row was read

    def get_work(self, work_id: int) -> StoredWork | None:
        data = self._work_blob(work_id)
        return work_from_bytes(data) if data is not None else None

    def get_thumbs(self, work_id: int) -> U8:
        data = self._work_blob(work_id)
        return thumbs_from_bytes(data) if data is not None else np.zeros((0, 0, 0), np.uint8)

    def remove_work(self, work_id: int) -> None:
        with session_scope(self.sessions) as s:
            key = s.scalar(delete(FeatureWork).where(FeatureWork.work_id == int(work_id))
                           .returning(FeatureWork.blob_key))
        if key is not None:
            self._delete_blob(key)

    def work_ids(self) -> list[int]:
        with self.sessions() as s:
            return [int(i) for i in s.scalars(select(FeatureWork.work_id).order_by(FeatureWork.work_id))]

    def _delete_blob(self, key: str) -> None:
        with suppress(BlobNotFound):  # another process removed it first
            self.blobs.delete(key)

    # ---- change feed

    def _append_rows(self, s: Session, rows: Sequence[FeatureChange]) -> int:
        """Insert feed rows in the caller's transaction, ids in commit order (see the module doc)."""
        if self.postgres:
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(_FEED_LOCK)})
        for r in rows:
            s.add(r)
            s.flush()  # one insert at a time: ids follow the lines' order
        return int(rows[-1].id)

    def append(self, lines: Sequence[str]) -> int:
        rows = [_row(ln) for ln in lines]
        if not rows:
            return self.end()
        with session_scope(self.sessions) as s:
            return self._append_rows(s, rows)

    def end(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.coalesce(func.max(FeatureChange.id), 0))) or 0)

    def changes(self, after: int) -> tuple[list[str], int]:
        with self.sessions() as s:
            rows = list(s.scalars(select(FeatureChange).where(FeatureChange.id > int(after))
                                  .order_by(FeatureChange.id)))
        if not rows:
            return [], after
        return [_line(r) for r in rows], int(rows[-1].id)

    # ---- vocabulary

    def get_vocab(self) -> bytes | None:
        with self.sessions() as s:
            key = s.scalar(select(FeatureVocab.blob_key).order_by(FeatureVocab.id.desc()).limit(1))
        return self.blobs.get(key) if key is not None else None

    def publish_vocab(self, data: bytes, version: str, works: int) -> int:
        key = self.blobs.put(data)
        with session_scope(self.sessions) as s:
            s.add(FeatureVocab(version=version, blob_key=key, size=len(data), works=int(works)))
            return self._append_rows(s, [FeatureChange(op="vocab", vocab=version, works=int(works))])

    # ---- snapshots

    def _current(self, s: Session, version: str) -> FeatureSnapshot | None:
        return s.scalar(select(FeatureSnapshot).where(FeatureSnapshot.vocab == version)
                        .order_by(FeatureSnapshot.id.desc()).limit(1))

    def snapshot_meta(self, version: str) -> dict[str, Any] | None:
        with self.sessions() as s:
            row = self._current(s, version)
            return dict(row.meta) if row is not None else None

    def put_snapshot(self, version: str, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any]) -> str:
        keys: dict[str, str] = {}
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
            keys[name] = self.blobs.put(buf.getvalue())
        cursor = int(meta["offset"])
        name = f"{version}-{cursor}-{uuid.uuid4().hex[:8]}"
        with session_scope(self.sessions) as s:
            s.add(FeatureSnapshot(name=name, vocab=version, cursor=cursor, meta={**meta, "dir": name},
                                  arrays=keys))
        return name

    def _cached(self, key: str) -> Path:
        """The blob ``key`` as a file in this machine's cache (downloaded and checked once)."""
        path = self.cache_dir / f"{key}.npy"
        if path.exists():
            return path
        data = self.blobs.get(key)
        if sha256_hex(data) != key:
            raise ValueError(f"snapshot blob {key} does not match its hash")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def get_snapshot(self, version: str, mapped: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        with self.sessions() as s:
            row = self._current(s, version)
            if row is None:
                raise FileNotFoundError(f"no postings snapshot of vocabulary {version}")
            meta, keys = dict(row.meta), dict(row.arrays)
        arrays: dict[str, Any] = {}
        for name, key in keys.items():
            a = np.load(self._cached(str(key)), mmap_mode="c" if name in mapped else None, allow_pickle=False)
            arrays[name] = np.asarray(a)
        # Arrays of older snapshots are dropped from the cache (a mapping elsewhere keeps its pages).
        keep = {f"{k}.npy" for k in keys.values()}
        for f in self.cache_dir.glob("*.npy"):
            if f.name not in keep:
                f.unlink(missing_ok=True)
        return meta, arrays

    def remove_snapshots(self, version: str, stale: Collection[str]) -> None:
        with session_scope(self.sessions) as s:
            current = self._current(s, version)
            doomed = [r for r in s.scalars(select(FeatureSnapshot).where(
                (FeatureSnapshot.vocab == version) | FeatureSnapshot.vocab.in_(list(stale))))
                if current is None or r.id != current.id]
            latest_vocab = s.scalar(select(FeatureVocab.id).order_by(FeatureVocab.id.desc()).limit(1))
            old_vocabs = [v for v in s.scalars(select(FeatureVocab).where(FeatureVocab.version.in_(list(stale))))
                          if v.id != latest_vocab]
            gone = {str(k) for r in doomed for k in r.arrays.values()} | {v.blob_key for v in old_vocabs}
            for r in doomed:
                s.delete(r)
            for v in old_vocabs:
                s.delete(v)
            s.flush()
            kept = {str(k) for r in s.scalars(select(FeatureSnapshot)) for k in r.arrays.values()}
            kept |= set(s.scalars(select(FeatureVocab.blob_key)))
        for key in gone - kept:
            self._delete_blob(key)

    # ---- locks

    @contextmanager
    def lock(self, name: str, *, timeout: float, wait: bool = True) -> Iterator[None]:
        if not self.postgres:
            with self._file_lock(name, timeout=timeout, wait=wait):
                yield
            return
        key = lock_key(name)
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            deadline = time.monotonic() + (timeout if wait else 0.0)
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() >= deadline:
                    raise Locked(f"the feature registry's {name!r} lock is held elsewhere")
                time.sleep(0.05)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            conn.close()

    @contextmanager
    def _file_lock(self, name: str, *, timeout: float, wait: bool) -> Iterator[None]:
        import portalocker

        if not name or any(c in name for c in "/\\."):
            raise ValueError(f"not a lock name: {name!r}")
        if self.lock_dir is None:
            raise RuntimeError("the SQL feature store has no lock folder (an in-memory SQLite database)")
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        held = portalocker.Lock(str(self.lock_dir / f"{name}.lock"), timeout=timeout if wait else 0,
                                fail_when_locked=not wait)
        try:
            held.acquire()
        except portalocker.LockException as exc:
            raise Locked(f"the feature registry's {name!r} lock is held by another process") from exc
        try:
            yield
        finally:
            held.release()
