"""The embedded VectorIndex: shared SQLite log + a Qdrant Edge replica per process.

Why this shape. Both in-process Qdrant engines lock their files for as long
as they are open: qdrant-client's local mode takes an exclusive portalocker
lock on its folder, and an ``EdgeShard`` an exclusive lock on its WAL. In the
embedded deployment several processes search at once (the CLI, and a Celery
worker's prefork children), and a work registered by one must be searchable
by the others immediately. So no process keeps a shared engine open:

- The source of truth is ``DIR/points.sqlite`` (WAL mode, so readers never
  block on the one writer): every point's payload and vectors, and an
  append-only change log ``(seq, point_id)``. A write is one SQLite
  transaction.
- Each process searches its own replica: an Edge shard in a private temporary
  folder (HNSW built by Edge's optimiser once the replica is large). Before
  every search the process reads ``max(seq)`` (one indexed SQLite read) and
  applies the points changed since the last sync; ``clear()`` bumps an epoch
  that makes every replica reload from scratch.

The engine was chosen by measurement (``bench/index_embedded.py``, numbers in
``docs/benchmarks.md``): Edge searches 10k-100k 512-d vectors in about 2 ms;
local mode is a numpy scan in Python that persists each point through pickled
SQLite rows, more than ten times slower to search and far slower to fill.

Sparse named vectors (:class:`SparseVectorSpec`) are Edge sparse vectors; in
the store a point's blob holds, per sparse name, ``n`` (uint32), its ``n``
indices (uint32) and ``n`` values (float32), after the dense ones in name
order. With ``modifier="idf"`` Edge keeps the document frequencies of points
it has deleted or replaced until the replica is rebuilt (qdrant-edge-py 0.9:
an IDF that is stale after a delete, where qdrant-client's local mode
recomputes it; the contract suite pins both). A new process, a ``clear()``
or a restart rebuilds the replica from the live points, and so does a
replica that has applied :data:`IDF_REBUILD_MIN` changes and a quarter of
its size since it was built, which bounds the drift.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matching.errors import IndexError_
from matching.index.base import (
    Hit,
    IndexPoint,
    SparseVector,
    SparseVectorSpec,
    VectorSpec,
    check_point,
    check_specs,
)

__all__ = ["EmbeddedIndex"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY,
    work_id INTEGER NOT NULL,
    owner_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    names TEXT NOT NULL,
    vectors BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_points_work ON points (work_id);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, point_id INTEGER NOT NULL);
"""
#: Replicas at least this large get an HNSW index; below it Edge's plain scan is faster to keep.
HNSW_MIN_POINTS = 20_000
#: With an IDF sparse vector, a replica is rebuilt once this many point changes (and at
#: least a quarter of its points) have been applied to it since it was built.
IDF_REBUILD_MIN = 64
_BATCH = 1000


class EmbeddedIndex:
    """VectorIndex for one machine, shared safely by several processes."""

    def __init__(self, directory: Path, specs: Sequence[VectorSpec], *,
                 sparse_specs: Sequence[SparseVectorSpec] = (), hnsw_min_points: int = HNSW_MIN_POINTS) -> None:
        self.directory = Path(directory)
        self._specs = list(specs)
        self._sparse = list(sparse_specs)
        check_specs(self._specs, self._sparse)
        self._by_name = {s.name: s for s in self._specs}
        self._sparse_by_name = {s.name: s for s in self._sparse}
        self._hnsw_min = hnsw_min_points
        self._lock = threading.RLock()
        self._pid = -1
        self._db: sqlite3.Connection | None = None
        self._shard: Any = None
        self._shard_dir: str | None = None
        self._seq = 0
        self._epoch = ""
        self._idf = any(s.modifier == "idf" for s in self._sparse)
        self._built = 0
        self._churn = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_specs()

    # ------------------------------------------------------------------ store


    @property
    def specs(self) -> list[VectorSpec]:
        return list(self._specs)

    @property
    def sparse_specs(self) -> list[SparseVectorSpec]:
        return list(self._sparse)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            # A connection or a replica must not cross a fork: start afresh.
            self._db = None
            self._shard = None
            self._shard_dir = None
            self._seq = 0
            self._epoch = ""
            self._pid = os.getpid()
            db = sqlite3.connect(self.directory / "points.sqlite", timeout=60, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=60000")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _check_specs(self) -> None:
        dense = [[s.name, s.size, s.distance] for s in self._specs]
        # A dense-only layout is written as before, so existing indexes still open.
        want = json.dumps(dense if not self._sparse else
                          {"dense": dense, "sparse": [[s.name, s.modifier] for s in self._sparse]})
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT value FROM meta WHERE key='specs'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('specs', ?)", (want,))
                    db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (os.urandom(8).hex(),))
                elif row[0] != want:
                    raise IndexError_(
                        f"index at {self.directory} was built for vectors {row[0]}, not {want}: the matching "
                        "settings (use_embedder / --no-embedder, descriptor, candidates) differ from the ones "
                        "that indexed the registry. Use those settings, or run `artwatch index rebuild` to "
                        "re-index every work for these (the other settings then need a rebuild in turn)"
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _encode(self, p: IndexPoint) -> tuple[str, bytes]:
        names = sorted([*p.vectors, *p.sparse])
        parts = []
        for n in names:
            if n in p.sparse:
                sv = p.sparse[n]
                parts += [np.uint32(len(sv)).tobytes(), sv.indices.tobytes(), sv.values.tobytes()]
            else:
                parts.append(np.ascontiguousarray(p.vectors[n], dtype=np.float32).tobytes())
        return ",".join(names), b"".join(parts)

    def _decode(self, names: str, blob: bytes) -> dict[str, Any]:
        """Dense vectors as lists, sparse ones as ``(indices, values)`` lists."""
        out: dict[str, Any] = {}
        off = 0
        for n in names.split(",") if names else []:
            if n in self._sparse_by_name:
                k = int(np.frombuffer(blob, np.uint32, 1, off)[0])
                idx = np.frombuffer(blob, np.uint32, k, off + 4)
                val = np.frombuffer(blob, np.float32, k, off + 4 + 4 * k)
                out[n] = (idx.tolist(), val.tolist())
                off += 4 + 8 * k
            else:
                size = self._by_name[n].size
                out[n] = np.frombuffer(blob, np.float32, size, off).tolist()
                off += 4 * size
        return out

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        rows = []
        for p in points:
            check_point(self._by_name, p, self._sparse_by_name)
            names, blob = self._encode(p)
            rows.append((int(p.id), int(p.payload["work_id"]), int(p.payload["owner_id"]),
                         json.dumps(dict(p.payload)), names, blob))
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?)", rows)
                db.executemany("INSERT INTO changes (point_id) VALUES (?)", [(r[0],) for r in rows])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def delete_work(self, work_id: int) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in db.execute("SELECT id FROM points WHERE work_id=?", (int(work_id),))]
                db.execute("DELETE FROM points WHERE work_id=?", (int(work_id),))
                db.executemany("INSERT INTO changes (point_id) VALUES (?)", [(i,) for i in ids])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def clear(self) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM points")
                db.execute("DELETE FROM changes")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (os.urandom(8).hex(),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def count(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT count(*) FROM points").fetchone()[0])

    # ---------------------------------------------------------------- replica

    def _new_shard(self) -> Any:
        import qdrant_edge as qe

        self._drop_shard()
        self._shard_dir = tempfile.mkdtemp(prefix="artwatch-index-")
        dist = {"cosine": qe.Distance.Cosine, "euclid": qe.Distance.Euclid}
        sparse: dict[str, Any] = {}
        if self._sparse:
            sparse["sparse_vectors"] = {
                s.name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if s.modifier == "idf" else None)
                for s in self._sparse}
        cfg = qe.EdgeConfig(
            vectors={s.name: qe.EdgeVectorParams(size=s.size, distance=dist[s.distance]) for s in self._specs},
            wal_enabled=False, **sparse,
        )
        shard = qe.EdgeShard.create(os.path.join(self._shard_dir, "shard"), cfg)
        for key in ("work_id", "owner_id"):
            shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Integer))
        return shard

    def _drop_shard(self) -> None:
        if self._shard is not None:
            try:
                self._shard.close()
            except Exception:  # pragma: no cover - closing a replica we discard
                log.debug("closing replica failed", exc_info=True)
            self._shard = None
        if self._shard_dir:
            shutil.rmtree(self._shard_dir, ignore_errors=True)
            self._shard_dir = None

    def _apply(self, rows: Iterable[tuple[int, str, str, bytes]], deleted: Sequence[int]) -> int:
        import qdrant_edge as qe

        n = 0
        batch: list[Any] = []
        for pid, payload, names, blob in rows:
            vectors = {n: qe.SparseVector(*v) if isinstance(v, tuple) else v
                       for n, v in self._decode(names, blob).items()}
            batch.append(qe.Point(int(pid), vectors, json.loads(payload)))
            if len(batch) >= _BATCH:
                self._shard.update(qe.UpdateOperation.upsert_points(batch))
                n += len(batch)
                batch = []
        if batch:
            self._shard.update(qe.UpdateOperation.upsert_points(batch))
            n += len(batch)
        if deleted:
            self._shard.update(qe.UpdateOperation.delete_points([int(i) for i in deleted]))
        return n

    def sync(self) -> None:
        """Bring this process's replica up to date with the shared store."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")  # one consistent snapshot of meta, changes and points
            try:
                epoch = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]
                seq = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
                changed: list[int] = []
                if self._shard is not None and epoch == self._epoch and seq != self._seq:
                    changed = sorted({r[0] for r in db.execute(
                        "SELECT point_id FROM changes WHERE seq > ?", (self._seq,))})
                    self._churn += len(changed)
                # Edge keeps counting replaced and deleted points in its IDF: past a
                # quarter of the replica, a fresh one is cheaper than the drift.
                stale_idf = self._idf and self._churn >= max(IDF_REBUILD_MIN, self._built // 4)
                if self._shard is None or epoch != self._epoch or stale_idf:
                    self._shard = self._new_shard()
                    n = self._apply(db.execute("SELECT id, payload, names, vectors FROM points"), [])
                    self._built, self._churn = n, 0
                    if n >= self._hnsw_min:
                        self._shard.optimize()
                elif changed:
                    present: list[tuple[int, str, str, bytes]] = []
                    for i in range(0, len(changed), 500):
                        chunk = changed[i : i + 500]
                        marks = ",".join("?" * len(chunk))
                        present.extend(db.execute(
                            f"SELECT id, payload, names, vectors FROM points WHERE id IN ({marks})", chunk))
                    alive = {r[0] for r in present}
                    self._apply(present, [i for i in changed if i not in alive])
                self._epoch, self._seq = epoch, seq
            finally:
                db.execute("COMMIT")

    def search(
        self, vector_name: str, vector: np.ndarray, limit: int = 10, owner_ids: Sequence[int] | None = None
    ) -> list[Hit]:
        import qdrant_edge as qe

        spec = self._by_name.get(vector_name)
        if spec is None:
            raise ValueError(f"unknown vector {vector_name!r}")
        if owner_ids is not None and not owner_ids:
            return []
        v = np.asarray(vector, np.float32)
        if v.shape != (spec.size,):
            raise ValueError(f"query for {vector_name!r} has shape {v.shape}, expected ({spec.size},)")
        with self._lock:
            self.sync()
            res = self._shard.query(qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(v.tolist(), using=vector_name),
                filter=self._owner_filter(owner_ids), with_payload=True,
            ))
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in res]

    @staticmethod
    def _owner_filter(owner_ids: Sequence[int] | None) -> Any:
        import qdrant_edge as qe

        if owner_ids is None:
            return None
        return qe.Filter(must=[qe.FieldCondition(key="owner_id", match=qe.MatchAny([int(o) for o in owner_ids]))])

    def search_sparse(
        self, vector_name: str, vector: SparseVector, limit: int = 10, owner_ids: Sequence[int] | None = None
    ) -> list[Hit]:
        import qdrant_edge as qe

        if vector_name not in self._sparse_by_name:
            raise ValueError(f"unknown sparse vector {vector_name!r}")
        if (owner_ids is not None and not owner_ids) or not len(vector):
            return []
        q = qe.SparseVector(vector.indices.tolist(), vector.values.tolist())
        with self._lock:
            self.sync()
            res = self._shard.query(qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(q, using=vector_name),
                filter=self._owner_filter(owner_ids), with_payload=True,
            ))
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in res]

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._drop_shard()
                if self._db is not None:
                    self._db.close()
            self._db = None
            self._pid = -1

    def __del__(self) -> None:  # pragma: no cover - best effort temp cleanup
        if getattr(self, "_pid", None) == os.getpid():
            self._drop_shard()
