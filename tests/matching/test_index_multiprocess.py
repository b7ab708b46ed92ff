"""The embedded index shared by real processes: changes are visible at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np

from matching.index import EmbeddedIndex, IndexPoint, VectorSpec, point_id

SPECS = [VectorSpec("clip", 8, "cosine")]
CTX = mp.get_context("spawn")  # a fresh interpreter, like a separate CLI process


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


def _point(work_id: int, owner: int = 1) -> IndexPoint:
    payload = {"work_id": work_id, "owner_id": owner, "kind": "logo"}
    return IndexPoint(point_id(work_id), {"clip": _vec(work_id)}, payload)


def _searcher(directory: str, commands: Any, results: Any) -> None:
    """Keeps one index open (like a worker) and answers search requests."""
    ix = EmbeddedIndex(Path(directory), SPECS)
    results.put(("ready", ix.search("clip", _vec(1), 5)))
    while True:
        cmd = commands.get(timeout=60)
        if cmd is None:
            break
        hits = ix.search("clip", _vec(cmd), 1)
        results.put((cmd, [h.work_id for h in hits], ix.count()))
    ix.close()


def _writer(directory: str, start: int, n: int) -> None:
    ix = EmbeddedIndex(Path(directory), SPECS)
    for w in range(start, start + n):
        ix.upsert([_point(w)])
        if w % 3 == 0:
            ix.search("clip", _vec(w), 1)  # interleave reads with another writer's writes
    ix.close()


def test_other_process_sees_adds_and_removes_at_once(tmp_path: Path) -> None:
    commands, results = CTX.Queue(), CTX.Queue()
    proc = CTX.Process(target=_searcher, args=(str(tmp_path), commands, results))
    proc.start()
    try:
        assert results.get(timeout=120) == ("ready", [])
        here = EmbeddedIndex(tmp_path, SPECS)
        here.upsert([_point(1), _point(2)])
        commands.put(2)
        assert results.get(timeout=30) == (2, [2], 2)
        here.delete_work(2)
        commands.put(2)
        assert results.get(timeout=30) == (2, [1], 1)
        here.clear()
        here.upsert([_point(3)])
        commands.put(1)
        assert results.get(timeout=30) == (1, [3], 1)
        commands.put(None)
        proc.join(timeout=30)
        assert proc.exitcode == 0
        here.close()
    finally:
        if proc.is_alive():
            proc.kill()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    EmbeddedIndex(tmp_path, SPECS).close()
    procs = [CTX.Process(target=_writer, args=(str(tmp_path), start, 40)) for start in (1, 101)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    ix = EmbeddedIndex(tmp_path, SPECS)
    assert ix.count() == 80
    for w in (1, 40, 101, 140):
        assert ix.search("clip", _vec(w), 1)[0].work_id == w
    ix.close()


def _forked_search(ix: EmbeddedIndex, work: int, results: Any) -> None:
    results.put([h.work_id for h in ix.search("clip", _vec(work), 1)])


def test_index_object_inherited_across_fork(tmp_path: Path) -> None:
    """A Celery prefork child inherits the parent's index object; it must open
    its own connection and replica, and still see the parent's later writes."""
    fork = mp.get_context("fork")
    ix = EmbeddedIndex(tmp_path, SPECS)
    ix.upsert([_point(1)])
    assert ix.search("clip", _vec(1), 1)[0].work_id == 1  # parent's replica exists
    ix.upsert([_point(2)])
    results = fork.Queue()
    child = fork.Process(target=_forked_search, args=(ix, 2, results))
    child.start()
    assert results.get(timeout=60) == [2]
    child.join(timeout=30)
    assert child.exitcode == 0
    assert ix.search("clip", _vec(2), 1)[0].work_id == 2
    ix.close()
