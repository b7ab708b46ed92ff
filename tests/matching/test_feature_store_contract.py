"""One contract for every FeatureStore: the folder store, and the SQL store on
PostgreSQL with the folder blob store and with an S3 one (moto's server)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from matching.features import LocalFeatures, StoredWork
from matching.store import FeatureStore, Locked
from matching.store.folder import FolderFeatureStore
from tests.matching.test_engine import OWNER, WORKS, encode, textured

CTX = mp.get_context("spawn")  # fresh interpreters, like separate machines' processes
#: Database engines this process opened, disposed after each test.
_ENGINES: list[Any] = []


@dataclass(frozen=True)
class Spec:
    """How a process (this one or a child) opens the same store."""

    kind: str  # "folder" or "sql"
    root: str  # the process's own data dir for "sql" (its snapshot cache)
    db_url: str = ""
    blobs: str = ""  # a folder path, or "s3" (settings from the environment)

    def with_root(self, root: Path) -> Spec:
        return Spec(self.kind, str(root), self.db_url, self.blobs)


def open_store(spec: Spec) -> FeatureStore:
    if spec.kind == "folder":
        return FolderFeatureStore(Path(spec.root) / "features")
    from config.settings import BlobSettings
    from matching.store.sql import SqlFeatureStore
    from storage.blobs import BlobStore, FolderBlobStore
    from storage.db import make_engine, make_sessionmaker

    blobs: BlobStore
    if spec.blobs == "s3":
        import os

        from storage.blobs_s3 import S3BlobStore

        blobs = S3BlobStore.from_settings(BlobSettings(
            kind="s3", url=os.environ["ARTWATCH_BLOBS__URL"], endpoint_url=os.environ["ARTWATCH_BLOBS__ENDPOINT_URL"],
            region=os.environ["ARTWATCH_BLOBS__REGION"]))
    else:
        blobs = FolderBlobStore(Path(spec.blobs))
    db = make_engine(spec.db_url)
    _ENGINES.append(db)
    return SqlFeatureStore(make_sessionmaker(db), blobs,
                           cache_dir=Path(spec.root) / "cache" / "feature-snapshots")


@pytest.fixture(params=["folder", "postgres", "postgres-s3"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spec]:
    try:
        yield from _spec(request, tmp_path)
    finally:
        while _ENGINES:
            _ENGINES.pop().dispose()


def _spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spec]:
    if request.param == "folder":
        yield Spec("folder", str(tmp_path / "shared"))
        return
    from storage.db import make_engine
    from storage.models import Base

    url = str(request.getfixturevalue("postgres_url"))
    db = make_engine(url)
    Base.metadata.create_all(db)
    db.dispose()
    if request.param == "postgres-s3":
        request.getfixturevalue("s3_env")
        yield Spec("sql", str(tmp_path / "a"), url, "s3")
    else:
        yield Spec("sql", str(tmp_path / "a"), url, str(tmp_path / "blobs"))


def _work(wid: int, n: int = 20) -> StoredWork:
    rng = np.random.default_rng(wid)

    def feats() -> LocalFeatures:
        return LocalFeatures(rng.random((n, 2), np.float32) * 100, rng.random(n, np.float32),
                             rng.random(n, np.float32) * 360, rng.integers(0, 256, (n, 128), dtype=np.uint8),
                             120, 90)

    return StoredWork(wid, 10 + wid, "logo", 120, 90, feats(), feats(),
                      rng.integers(0, 256, (3, 32), dtype=np.uint8), rng.integers(0, 256, (2, 8, 8), dtype=np.uint8))


def _same(a: StoredWork, b: StoredWork) -> None:
    assert (a.work_id, a.owner_id, a.kind, a.width, a.height) == (b.work_id, b.owner_id, b.kind, b.width, b.height)
    for fa, fb in ((a.direct, b.direct), (a.mirrored, b.mirrored)):
        for x, y in ((fa.xy, fb.xy), (fa.scale, fb.scale), (fa.angle, fb.angle), (fa.desc, fb.desc)):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
    np.testing.assert_array_equal(a.pdq, b.pdq)
    np.testing.assert_array_equal(a.thumbs, b.thumbs)


# ---------------------------------------------------------------- round trips


def test_work_arrays_round_trip(spec: Spec) -> None:
    store = open_store(spec)
    assert store.work_ids() == [] and store.get_work(1) is None
    assert store.get_thumbs(1).shape == (0, 0, 0)
    for wid in (3, 1, 2):
        store.put_work(_work(wid))
    assert store.work_ids() == [1, 2, 3]
    got = store.get_work(2)
    assert got is not None
    _same(got, _work(2))
    np.testing.assert_array_equal(store.get_thumbs(3), _work(3).thumbs)
    store.put_work(_work(2, n=5))  # replacing a work
    again = open_store(spec).get_work(2)  # seen by another instance
    assert again is not None and len(again.direct) == 5
    store.remove_work(1)
    store.remove_work(99)  # absent: nothing happens
    assert store.work_ids() == [2, 3] and store.get_work(1) is None


def test_vocabulary_round_trips_with_its_line(spec: Spec) -> None:
    store = open_store(spec)
    assert store.get_vocab() is None
    start = store.append(["add 1"])
    cursor = store.publish_vocab(b"vocab-bytes-1", "v1", 1)
    assert cursor > start
    assert store.get_vocab() == b"vocab-bytes-1"
    store.publish_vocab(b"vocab-bytes-2", "v2", 7)
    other = open_store(spec)
    assert other.get_vocab() == b"vocab-bytes-2"
    assert other.changes(0)[0] == ["add 1", "vocab v1 1", "vocab v2 7"]


# ---------------------------------------------------------------- change feed


def test_change_feed_order_and_cursors(spec: Spec) -> None:
    store = open_store(spec)
    assert store.end() == 0 and store.changes(0) == ([], 0)
    c1 = store.append(["add 1", "add 2"])
    assert store.end() == c1
    reader = open_store(spec)
    lines, cur = reader.changes(0)
    assert (lines, cur) == (["add 1", "add 2"], c1)
    assert reader.changes(cur) == ([], cur)
    c2 = store.append(["del 1"])
    assert c2 > c1
    assert reader.changes(cur) == (["del 1"], c2)
    assert reader.changes(0) == (["add 1", "add 2", "del 1"], c2)


def _appender(spec: Spec, who: int, n: int) -> None:
    store = open_store(spec)
    for i in range(n):
        store.append([f"add {who * 1000 + i}", f"del {who * 1000 + i}"])


def test_two_processes_append_concurrently_without_losing_lines(spec: Spec) -> None:
    n = 40
    procs = [CTX.Process(target=_appender, args=(spec, who, n)) for who in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    lines, cursor = open_store(spec).changes(0)
    assert cursor == open_store(spec).end()
    assert len(lines) == 4 * n and len(set(lines)) == 4 * n  # none lost, none doubled
    for who in (1, 2):
        mine = [ln for ln in lines if int(ln.split()[1]) // 1000 == who]
        # Each process's lines in its order, each pair whole (an append is atomic).
        assert mine == [f"{op} {who * 1000 + i}" for i in range(n) for op in ("add", "del")]
        firsts = [k for k, ln in enumerate(lines) if ln.startswith("add ") and int(ln.split()[1]) // 1000 == who]
        assert all(lines[k + 1] == "del " + lines[k].split()[1] for k in firsts)


def test_a_late_commit_is_never_skipped(spec: Spec) -> None:
    """PostgreSQL assigns ids at insert: without ordering, a transaction holding a lower
    id could commit after a higher one and a reader at the higher cursor would skip it."""
    if spec.kind != "sql":
        pytest.skip("the folder journal is appended under a file lock")
    from matching.store.sql import SqlFeatureStore
    from storage.models import FeatureChange

    store = open_store(spec)
    assert isinstance(store, SqlFeatureStore)
    reader = open_store(spec)
    slow = store.sessions()
    slow_id = store._append_rows(slow, [FeatureChange(op="add", work_id=1)])  # inserted, not committed
    done: list[int] = []
    fast = threading.Thread(target=lambda: done.append(open_store(spec).append(["add 2"])))
    fast.start()
    fast.join(timeout=1.0)
    lines, cursor = reader.changes(0)
    assert lines == []  # neither is visible: the second append waits for the first to commit
    slow.commit()
    slow.close()
    fast.join(timeout=60)
    assert done and done[0] > slow_id
    assert reader.changes(cursor) == (["add 1", "add 2"], done[0])


# ---------------------------------------------------------------- locks


def _holder(spec: Spec, name: str, orders: Any, events: Any) -> None:
    store = open_store(spec)
    with store.lock(name, timeout=30):
        events.put("held")
        assert orders.get(timeout=120) == "release"  # the parent's word


def test_locks_are_exclusive_across_processes(spec: Spec) -> None:
    store = open_store(spec)
    orders, events = CTX.Queue(), CTX.Queue()
    proc = CTX.Process(target=_holder, args=(spec, "retrain", orders, events))
    proc.start()
    try:
        assert events.get(timeout=120) == "held"
        with pytest.raises(Locked), store.lock("retrain", timeout=0, wait=False):
            pass
        with store.lock("snapshot", timeout=5, wait=False):  # another name is free
            pass
        orders.put("release")
        proc.join(timeout=60)
        assert proc.exitcode == 0
        with store.lock("retrain", timeout=30), pytest.raises(Locked), open_store(spec).lock("retrain", timeout=0.2):
            pass  # free again here, so the other instance waits its timeout and gives up
    finally:
        if proc.is_alive():
            proc.kill()


# ---------------------------------------------------------------- snapshots


def test_snapshots_put_get_and_remove(spec: Spec) -> None:
    store = open_store(spec)
    with pytest.raises(FileNotFoundError):
        store.get_snapshot("v1", ())
    assert store.snapshot_meta("v1") is None
    a = {"sig": np.arange(6, dtype=np.uint64), "works": np.array([[1, 2], [3, 4]], np.int64),
         "kinds": np.array(["logo", "artwork"])}
    first = store.put_snapshot("v1", a, {"offset": 5, "format": 1, "vocab": "v1"})
    b = dict(a, sig=np.arange(8, dtype=np.uint64))
    second = store.put_snapshot("v1", b, {"offset": 9, "format": 1, "vocab": "v1"})
    store.put_snapshot("v0", a, {"offset": 1, "format": 1, "vocab": "v0"})
    meta = store.snapshot_meta("v1")
    assert meta is not None and meta["dir"] == second != first and meta["offset"] == 9
    reader = open_store(spec.with_root(Path(spec.root).parent / "reader")) if spec.kind == "sql" else store
    got_meta, arrays = reader.get_snapshot("v1", ("sig",))
    assert got_meta["dir"] == second
    np.testing.assert_array_equal(arrays["sig"], b["sig"])
    assert arrays["sig"].dtype == np.uint64 and isinstance(arrays["sig"].base, np.memmap)  # mapped, not read
    assert not isinstance(arrays["works"].base, np.memmap)
    np.testing.assert_array_equal(arrays["works"], a["works"])
    assert list(arrays["kinds"]) == ["logo", "artwork"]
    store.remove_snapshots("v1", {"v0"})
    assert store.snapshot_meta("v0") is None
    with pytest.raises(FileNotFoundError):
        open_store(spec).get_snapshot("v0", ())
    still = open_store(spec.with_root(Path(spec.root).parent / "third")) if spec.kind == "sql" else store
    meta3, arrays3 = still.get_snapshot("v1", ())  # the current one stays, whole
    assert meta3["dir"] == second
    np.testing.assert_array_equal(arrays3["sig"], b["sig"])


# ---------------------------------------------------------------- two LocalIndexes, two data dirs


def test_a_work_registered_on_one_machine_is_found_on_another(
    spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines that share only the store (in SQL mode each has its own, empty,
    DATA_DIR): registrations, removals and a retrain in one reach the other."""
    from matching.engine import Engine, WorkRef

    a_dir, b_dir = tmp_path / "machine-a", tmp_path / "machine-b"
    store_a = open_store(spec.with_root(a_dir) if spec.kind == "sql" else spec)
    store_b = open_store(spec.with_root(b_dir) if spec.kind == "sql" else spec)
    a = Engine(a_dir, feature_store=store_a)
    b = Engine(b_dir, feature_store=store_b)
    for wid, img in WORKS.items():
        a.register(WorkRef(wid, OWNER[wid], "artwork"), encode(img, "PNG"))
    crop = encode(WORKS[1][60:300, 100:420], quality=85)
    assert [c.work_id for c in b.analyse(crop) if c.match] == [1]
    assert b.index.work_ids == sorted(WORKS)
    if spec.kind == "sql":
        assert not (b_dir / "features").exists()  # nothing shared lives in the data dir

    a.retrain()
    assert a.index.vocab is not None
    reads: list[int] = []
    real = store_b.get_work

    def counted(work_id: int) -> StoredWork | None:
        reads.append(work_id)
        return real(work_id)

    monkeypatch.setattr(store_b, "get_work", counted)
    assert [c.work_id for c in b.analyse(crop) if c.match] == [1]
    assert b.index.vocab is not None and b.index.vocab.version == a.index.vocab.version
    assert reads == []  # switched through the retrain's snapshot, no work re-read
    fresh = Engine(tmp_path / "machine-c", feature_store=open_store(
        spec.with_root(tmp_path / "machine-c") if spec.kind == "sql" else spec))
    assert fresh.index.work_ids == sorted(WORKS)
    assert [c.work_id for c in fresh.analyse(crop) if c.match] == [1]

    a.unregister(1)
    a.register(WorkRef(7, 30, "artwork"), encode(textured(7), "PNG"))
    assert not any(c.work_id == 1 and c.match for c in b.analyse(crop))
    assert 7 in b.index.work_ids and reads == [7]


def test_the_settings_choose_the_store_and_build_engine_uses_it(tmp_path: Path, postgres_url: str) -> None:
    from config.settings import load_settings
    from matching.engine import build_engine
    from matching.store import build_feature_store
    from matching.store.sql import SqlFeatureStore
    from storage.db import make_engine
    from storage.models import Base

    off = {"use_embedder": False, "descriptor": ""}
    folder = build_feature_store(load_settings(data_dir=tmp_path / "f", matching=off))
    assert isinstance(folder, FolderFeatureStore) and folder.root == tmp_path / "f" / "features"
    db = make_engine(postgres_url)
    Base.metadata.create_all(db)
    db.dispose()
    settings = load_settings(data_dir=tmp_path / "s", database_url=postgres_url, shared={"kind": "services"},
                             matching=off)
    engine = build_engine(settings)
    store = engine.index.store
    try:
        assert isinstance(store, SqlFeatureStore)
        assert store.cache_dir == tmp_path / "s" / "cache" / "feature-snapshots"
        store.append(["add 5"])
        assert store.changes(0)[0] == ["add 5"]
        given = FolderFeatureStore(tmp_path / "given")
        assert build_engine(settings, feature_store=given).index.store is given
    finally:
        if isinstance(store, SqlFeatureStore):
            store.engine.dispose()


# ---------------------------------------------------------------- the work format


def test_descriptors_are_stored_compressed_and_the_plain_format_still_reads() -> None:
    import io

    from matching.features import extract_features
    from matching.store import work_from_bytes, work_to_bytes

    f = extract_features(textured(5))
    assert len(f) > 200
    w = StoredWork(5, 10, "artwork", f.width, f.height, f, LocalFeatures.empty(f.width, f.height),
                   np.zeros((1, 32), np.uint8), np.zeros((0, 0, 0), np.uint8))
    data = work_to_bytes(w)
    _same(work_from_bytes(data), w)  # an empty side round-trips too
    with np.load(io.BytesIO(data)) as z:
        assert "d_desc" not in z.files and z["d_desc_zst"].nbytes < 0.9 * f.desc.nbytes  # RootSIFT's small values
    assert len(data) < f.desc.nbytes
    # A work written before the descriptors were compressed: plain members.
    buf = io.BytesIO()
    with np.load(io.BytesIO(data)) as z:
        old = {k: z[k] for k in z.files if "desc" not in k}
    np.savez(buf, **old, d_desc=f.desc, m_desc=np.zeros((0, 128), np.uint8))
    _same(work_from_bytes(buf.getvalue()), w)


def test_a_work_whose_descriptors_do_not_fit_their_shape_is_an_error() -> None:
    import io

    from matching.store import work_from_bytes, work_to_bytes

    w = _work(4)
    with np.load(io.BytesIO(work_to_bytes(w))) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["d_desc_shape"] = np.array([len(w.direct) - 1, 128], np.int64)  # one row fewer than stored
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(ValueError, match="descriptors hold 2560 bytes, not 19 x 128"):
        work_from_bytes(buf.getvalue())


def test_a_full_load_in_threads_gives_the_same_postings(spec: Spec) -> None:
    """A retrain reads and quantises works in several threads (``LocalIndex.load_threads``),
    and so does a refresh that replays many registrations: on every store the vocabulary
    and every postings array equal those of one thread."""
    from matching.replica import LocalIndex

    store = open_store(spec)
    for wid in range(1, 41):
        store.put_work(_work(wid, n=30))
    store.append([f"add {wid}" for wid in range(1, 41)])
    one, many = LocalIndex(store, load_threads=1), LocalIndex(store, load_threads=3)
    one.retrain()
    many.retrain()
    assert one.vocab is not None and many.vocab is not None and one.vocab.version != many.vocab.version
    for name in ("coarse", "fine", "proj"):
        assert np.array_equal(getattr(one.vocab, name), getattr(many.vocab, name)), name

    def same_state() -> None:
        a, b = one.export_state(), many.export_state()
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k

    one._reload_all(many.vocab)  # both under one vocabulary: the arrays must match exactly
    same_state()
    # 20 registrations replayed at once (a refresh after a pause) also load in threads.
    for wid in range(41, 61):
        store.put_work(_work(wid, n=30))
    store.append([f"add {wid}" for wid in range(41, 61)] + ["del 3"])
    one.refresh()
    many.refresh()
    assert many.work_ids == [w for w in range(1, 61) if w != 3]
    same_state()
