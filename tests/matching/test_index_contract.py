"""One contract suite for every VectorIndex implementation.

Runs against the embedded index and qdrant-client's local mode always, and
against a real Qdrant server when ARTWATCH_TEST_QDRANT_URL is set (it is
skipped, with that reason, otherwise). Dense named vectors and sparse named
vectors (``TestSparseVectorContract``) run through the same backends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from config.settings import load_settings
from matching.index import (
    PDQ_VECTOR,
    EmbeddedIndex,
    IndexPoint,
    QdrantIndex,
    SparseVector,
    SparseVectorSpec,
    VectorIndex,
    VectorSpec,
    build_index,
    pdq_to_vector,
    point_id,
)

SPECS = [VectorSpec("clip", 16, "cosine"), PDQ_VECTOR]
SPARSE = [SparseVectorSpec("words"), SparseVectorSpec("words_idf", "idf")]
BACKENDS = ["embedded", "qdrant-local", "qdrant-server"]


def _unit(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    v = rng.standard_normal(n).astype(np.float32)
    return v / np.linalg.norm(v)


def _open(kind: str, tmp_path: Path, sparse: list[SparseVectorSpec]) -> VectorIndex:
    from qdrant_client import QdrantClient

    if kind == "embedded":
        return EmbeddedIndex(tmp_path / "index", SPECS, sparse_specs=sparse)
    if kind == "qdrant-local":
        return QdrantIndex(QdrantClient(path=str(tmp_path / "qlocal")), "works", SPECS, sparse)
    url = os.environ.get("ARTWATCH_TEST_QDRANT_URL")
    if not url:
        pytest.skip("ARTWATCH_TEST_QDRANT_URL not set: no Qdrant server to test against")
    return QdrantIndex(QdrantClient(url=url), f"test_{uuid.uuid4().hex[:8]}", SPECS, sparse)


def _close(ix: VectorIndex) -> None:
    if isinstance(ix, QdrantIndex) and ix.client.init_options.get("url"):
        ix.client.delete_collection(ix.collection)
    ix.close()


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    ix = _open(request.param, tmp_path, [])
    yield ix
    _close(ix)


@pytest.fixture(params=BACKENDS)
def sparse_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    """Dense ``clip``/``pdq`` plus sparse ``words`` (plain dot product) and ``words_idf`` (IDF modifier)."""
    ix = _open(request.param, tmp_path, SPARSE)
    yield ix
    _close(ix)


def _work_points(rng: np.random.Generator, work_id: int, owner_id: int, n_pdq: int = 2) -> list[IndexPoint]:
    payload = {"work_id": work_id, "owner_id": owner_id, "kind": "logo"}
    pts = [IndexPoint(point_id(work_id, 0), {"clip": _unit(rng)}, payload)]
    for k in range(n_pdq):
        bits = np.packbits(rng.integers(0, 2, 256).astype(np.uint8))
        pts.append(IndexPoint(point_id(work_id, k + 1), {"pdq": pdq_to_vector(bits)}, {**payload, "variant": k}))
    return pts


class TestVectorIndexContract:
    def test_empty(self, index: VectorIndex) -> None:
        assert index.count() == 0
        assert index.search("clip", np.ones(16, np.float32) / 4, 5) == []

    def test_upsert_then_search_best_first(self, index: VectorIndex) -> None:
        rng = np.random.default_rng(1)
        pts = [p for w in range(1, 21) for p in _work_points(rng, w, owner_id=w % 4)]
        index.upsert(pts)
        assert index.count() == 60
        target = pts[3 * 7]  # work 8's clip point
        hits = index.search("clip", target.vectors["clip"], 5)
        assert len(hits) == 5
        assert hits[0].id == target.id and hits[0].work_id == 8 and hits[0].owner_id == 0
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert hits[0].payload["kind"] == "logo"
        # Only points that carry the vector are returned.
        assert all(h.id % 64 == 0 for h in index.search("clip", target.vectors["clip"], 100))

    def test_named_vectors_are_separate(self, index: VectorIndex) -> None:
        rng = np.random.default_rng(2)
        pts = _work_points(rng, 5, 1) + _work_points(rng, 6, 2)
        index.upsert(pts)
        q = pts[2].vectors["pdq"]  # work 5, variant 1
        hits = index.search("pdq", q, 10)
        assert {h.id for h in hits} == {point_id(5, 1), point_id(5, 2), point_id(6, 1), point_id(6, 2)}
        assert hits[0].id == point_id(5, 2) and hits[0].score == pytest.approx(0.0, abs=1e-3)
        assert hits[0].payload["variant"] == 1
        # Euclidean distance on bits is sqrt(Hamming distance).
        other = pts[4].vectors["pdq"]
        ham = int(np.abs(q - other).sum())
        d = next(h.score for h in hits if h.id == point_id(6, 1))
        assert d == pytest.approx(np.sqrt(ham), rel=1e-3)

    def test_owner_filter(self, index: VectorIndex) -> None:
        rng = np.random.default_rng(3)
        pts = [p for w in range(1, 31) for p in _work_points(rng, w, owner_id=w % 3, n_pdq=0)]
        index.upsert(pts)
        q = pts[0].vectors["clip"]
        hits = index.search("clip", q, 50, owner_ids=[2])
        assert len(hits) == 10 and {h.owner_id for h in hits} == {2}
        hits = index.search("clip", q, 50, owner_ids=[0, 1])
        assert len(hits) == 20 and {h.owner_id for h in hits} == {0, 1}
        assert index.search("clip", q, 50, owner_ids=[]) == []
        assert index.search("clip", q, 50, owner_ids=[99]) == []

    def test_upsert_replaces_and_delete_work_removes_all_points(self, index: VectorIndex) -> None:
        rng = np.random.default_rng(4)
        a, b = _work_points(rng, 1, 1), _work_points(rng, 2, 1)
        index.upsert(a + b)
        newer = IndexPoint(a[0].id, {"clip": _unit(rng)}, {"work_id": 1, "owner_id": 7, "kind": "artwork"})
        index.upsert([newer])
        assert index.count() == 6
        hits = index.search("clip", newer.vectors["clip"], 1)
        assert hits[0].id == newer.id and hits[0].owner_id == 7 and hits[0].payload["kind"] == "artwork"
        index.delete_work(1)
        assert index.count() == 3
        assert all(h.work_id == 2 for h in index.search("clip", newer.vectors["clip"], 10))
        assert all(h.work_id == 2 for h in index.search("pdq", a[1].vectors["pdq"], 10))
        index.delete_work(12345)  # unknown: no error
        assert index.count() == 3

    def test_clear(self, index: VectorIndex) -> None:
        rng = np.random.default_rng(5)
        index.upsert(_work_points(rng, 1, 1))
        index.search("clip", _unit(rng), 1)
        index.clear()
        assert index.count() == 0
        assert index.search("clip", _unit(rng), 5) == []
        index.upsert(_work_points(rng, 2, 1))
        assert [h.work_id for h in index.search("clip", _unit(rng), 5)] == [2]

    def test_bad_input_is_refused(self, index: VectorIndex) -> None:
        rng = np.random.default_rng(6)
        with pytest.raises(ValueError, match="unknown vector"):
            index.upsert([IndexPoint(1, {"nope": _unit(rng)}, {"work_id": 1, "owner_id": 1, "kind": "logo"})])
        with pytest.raises(ValueError, match="shape"):
            index.upsert([IndexPoint(1, {"clip": np.ones(3, np.float32)}, {"work_id": 1, "owner_id": 1, "kind": "x"})])
        with pytest.raises(ValueError, match="lacks 'owner_id'"):
            IndexPoint(1, {"clip": _unit(rng)}, {"work_id": 1, "kind": "logo"})
        with pytest.raises(ValueError, match="unknown vector"):
            index.search("nope", _unit(rng), 1)
        assert index.count() == 0


def _sparse(rng: np.random.Generator, nnz: int, dim: int = 300) -> SparseVector:
    idx = rng.choice(dim, size=nnz, replace=False).astype(np.uint32)
    return SparseVector(idx, rng.uniform(0.1, 2.0, nnz).astype(np.float32))


def _sparse_points(rng: np.random.Generator, works: range, owners: int = 3,
                   name: str = "words") -> list[IndexPoint]:
    """Two sparse points per work (the work and its mirror image), nothing dense."""
    return [IndexPoint(point_id(w, 62 + m), {}, {"work_id": w, "owner_id": w % owners, "kind": "logo", "mirrored": m},
                       sparse={name: _sparse(rng, int(rng.integers(5, 40)))})
            for w in works for m in (0, 1)]


def _qdrant_idf(points: list[IndexPoint], name: str) -> dict[int, float]:
    """Qdrant's IDF over the points carrying ``name``: ln(1 + (N - n + 0.5) / (n + 0.5))."""
    carrying = [p.sparse[name] for p in points if name in p.sparse]
    n_docs = len(carrying)
    df: dict[int, int] = {}
    for v in carrying:
        for i in v.indices.tolist():
            df[i] = df.get(i, 0) + 1
    return {i: float(np.log(1.0 + (n_docs - n + 0.5) / (n + 0.5))) for i, n in df.items()}


def _idf_scores(points: list[IndexPoint], name: str, q: SparseVector) -> dict[int, float]:
    idf = _qdrant_idf(points, name)
    weighted = SparseVector(q.indices, np.array([v * idf.get(int(i), 0.0) for i, v in
                                                 zip(q.indices.tolist(), q.values.tolist(), strict=True)],
                                                np.float32))
    return {p.id: weighted.dot(p.sparse[name]) for p in points if name in p.sparse}


def _brute_force(points: list[IndexPoint], q: SparseVector, name: str = "words") -> list[tuple[int, float]]:
    scored = [(p.id, q.dot(p.sparse[name])) for p in points if name in p.sparse]
    return sorted((s for s in scored if s[1] > 0), key=lambda s: -s[1])


class TestSparseVectorContract:
    def test_empty_index_and_empty_query(self, sparse_index: VectorIndex) -> None:
        rng = np.random.default_rng(10)
        assert [s.name for s in sparse_index.sparse_specs] == ["words", "words_idf"]
        assert sparse_index.search_sparse("words", _sparse(rng, 10), 5) == []
        sparse_index.upsert(_sparse_points(rng, range(1, 6)))
        empty = SparseVector(np.zeros(0, np.uint32), np.zeros(0, np.float32))
        assert sparse_index.search_sparse("words", empty, 5) == []
        assert sparse_index.search_sparse("words", _sparse(rng, 10), 5, owner_ids=[]) == []

    def test_scores_are_the_dot_product_best_first(self, sparse_index: VectorIndex) -> None:
        rng = np.random.default_rng(11)
        pts = _sparse_points(rng, range(1, 41))
        sparse_index.upsert(pts)
        for _ in range(5):
            q = _sparse(rng, 60)
            want = _brute_force(pts, q)
            hits = sparse_index.search_sparse("words", q, 10)
            assert len(hits) == min(10, len(want)) > 0
            assert [h.id for h in hits] == [i for i, _ in want[:10]]
            assert [h.score for h in hits] == pytest.approx([sc for _, sc in want[:10]], rel=1e-4)
            assert hits[0].payload["kind"] == "logo" and hits[0].work_id == hits[0].id // 64
        # A point sharing no index with the query is never a hit, however large the limit.
        q = _sparse(rng, 3)
        assert {h.id for h in sparse_index.search_sparse("words", q, 500)} == {i for i, _ in _brute_force(pts, q)}

    def test_owner_filter(self, sparse_index: VectorIndex) -> None:
        rng = np.random.default_rng(12)
        pts = _sparse_points(rng, range(1, 31))
        sparse_index.upsert(pts)
        q = _sparse(rng, 150)
        hits = sparse_index.search_sparse("words", q, 100, owner_ids=[2])
        want = [i for i, _ in _brute_force([p for p in pts if p.payload["owner_id"] == 2], q)]
        assert [h.id for h in hits] == want and {h.owner_id for h in hits} == {2}
        hits = sparse_index.search_sparse("words", q, 100, owner_ids=[0, 1])
        assert {h.owner_id for h in hits} == {0, 1}
        assert sparse_index.search_sparse("words", q, 100, owner_ids=[99]) == []

    def test_upsert_replaces_and_delete_work_removes(self, sparse_index: VectorIndex) -> None:
        rng = np.random.default_rng(13)
        pts = _sparse_points(rng, range(1, 11))
        sparse_index.upsert(pts)
        old = pts[0]
        fresh = SparseVector(np.array([1000, 1001, 1002], np.uint32), np.array([5.0, 5.0, 5.0], np.float32))
        sparse_index.upsert([IndexPoint(old.id, {}, {**old.payload, "owner_id": 7}, sparse={"words": fresh})])
        assert sparse_index.count() == len(pts)
        hits = sparse_index.search_sparse("words", fresh, 5)
        assert hits[0].id == old.id and hits[0].owner_id == 7
        assert hits[0].score == pytest.approx(75.0, rel=1e-5)
        # The old vector is gone: a query on its own indices no longer scores it.
        assert old.id not in {h.id for h in sparse_index.search_sparse("words", SparseVector(
            np.setdiff1d(old.sparse["words"].indices, fresh.indices), np.ones(
                np.setdiff1d(old.sparse["words"].indices, fresh.indices).shape[0], np.float32)), 100)}
        sparse_index.delete_work(1)
        assert sparse_index.count() == len(pts) - 2
        assert all(h.work_id != 1 for h in sparse_index.search_sparse("words", _sparse(rng, 200), 100))
        assert sparse_index.search_sparse("words", fresh, 5) == []

    def test_points_without_the_vector_are_never_returned(self, sparse_index: VectorIndex) -> None:
        rng = np.random.default_rng(14)
        dense = [p for w in range(1, 11) for p in _work_points(rng, w, 1)]
        words = _sparse_points(rng, range(11, 21))
        idf = _sparse_points(rng, range(21, 31), name="words_idf")
        both = [IndexPoint(point_id(40, 0), {"clip": _unit(rng)}, {"work_id": 40, "owner_id": 1, "kind": "logo"},
                           sparse={"words": _sparse(rng, 30)})]
        sparse_index.upsert(dense + words + idf + both)
        q = SparseVector(np.arange(300, dtype=np.uint32), np.ones(300, np.float32))
        got = {h.id for h in sparse_index.search_sparse("words", q, 1000)}
        assert got == {p.id for p in words + both}
        got_idf = {h.id for h in sparse_index.search_sparse("words_idf", q, 1000)}
        assert got_idf == {p.id for p in idf}
        # The dense side does not see sparse-only points either.
        assert {h.id for h in sparse_index.search("clip", _unit(rng), 1000)} == {
            p.id for p in dense + both if "clip" in p.vectors}

    def test_idf_modifier_weighs_the_query(self, sparse_index: VectorIndex) -> None:
        rng = np.random.default_rng(15)
        pts = _sparse_points(rng, range(1, 21), name="words_idf")
        sparse_index.upsert(pts)
        q = _sparse(rng, 120)
        want = _idf_scores(pts, "words_idf", q)
        hits = sparse_index.search_sparse("words_idf", q, 10)
        assert hits and [h.score for h in hits] == pytest.approx([want[h.id] for h in hits], rel=1e-3)
        assert [h.id for h in hits] == sorted((i for i in want if want[i] > 0), key=lambda i: -want[i])[:10]

    def test_bad_input_is_refused(self, sparse_index: VectorIndex) -> None:
        rng = np.random.default_rng(16)
        with pytest.raises(ValueError, match="unknown sparse vector"):
            sparse_index.upsert([IndexPoint(1, {}, {"work_id": 1, "owner_id": 1, "kind": "logo"},
                                            sparse={"nope": _sparse(rng, 3)})])
        with pytest.raises(ValueError, match="unknown sparse vector"):
            sparse_index.search_sparse("clip", _sparse(rng, 3), 1)
        with pytest.raises(ValueError, match="unknown vector"):
            sparse_index.search("words", _unit(rng), 1)
        with pytest.raises(ValueError, match="duplicate"):
            SparseVector(np.array([1, 1], np.uint32), np.array([1.0, 2.0], np.float32))
        with pytest.raises(ValueError, match="differ"):
            SparseVector(np.array([1, 2], np.uint32), np.array([1.0], np.float32))
        assert sparse_index.count() == 0


def test_idf_after_delete_differs_between_engines(tmp_path: Path) -> None:
    """After a delete, qdrant-client's local mode recomputes the IDF over the live
    points; a Qdrant Edge replica (the embedded index) keeps counting the deleted
    ones until it is rebuilt: by a new process, ``clear()``, or once the changes
    it applied reach ``IDF_REBUILD_MIN`` and a quarter of its size. Until then
    scores under ``modifier="idf"`` differ slightly between the two."""
    from qdrant_client import QdrantClient

    from matching.index.embedded import IDF_REBUILD_MIN

    rng = np.random.default_rng(17)
    pts = _sparse_points(rng, range(1, 101), name="words_idf")
    q = _sparse(rng, 150)

    def live(gone: int) -> dict[int, float]:
        return _idf_scores([p for p in pts if p.payload["work_id"] > gone], "words_idf", q)

    local = QdrantIndex(QdrantClient(path=str(tmp_path / "q")), "works", SPECS, SPARSE)
    edge = EmbeddedIndex(tmp_path / "e", SPECS, sparse_specs=SPARSE)
    for ix in (local, edge):
        ix.upsert(pts)
        ix.search_sparse("words_idf", q, 1)  # the replica holds every point
        for w in range(1, 6):
            ix.delete_work(w)  # 10 changes: below the rebuild threshold
    assert IDF_REBUILD_MIN > 10
    want, before = live(5), live(0)
    for h in local.search_sparse("words_idf", q, 5):
        assert h.score == pytest.approx(want[h.id], rel=1e-3)
    stale = edge.search_sparse("words_idf", q, 5)
    assert all(h.work_id > 5 for h in stale)
    assert [h.score for h in stale] == pytest.approx([before[h.id] for h in stale], rel=1e-3)
    assert any(abs(before[h.id] - want[h.id]) > 1e-3 * want[h.id] for h in stale)
    fresh = EmbeddedIndex(tmp_path / "e", SPECS, sparse_specs=SPARSE)  # another process
    for h in fresh.search_sparse("words_idf", q, 5):
        assert h.score == pytest.approx(want[h.id], rel=1e-3)
    fresh.close()
    for w in range(6, 41):
        edge.delete_work(w)  # 80 changes in all, past a quarter of 200: rebuilt
    want = live(40)
    for h in edge.search_sparse("words_idf", q, 5):
        assert h.score == pytest.approx(want[h.id], rel=1e-3)
    edge.close()
    local.close()


def test_sparse_layout_mismatch_is_refused(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    from matching.errors import IndexError_

    EmbeddedIndex(tmp_path / "e", SPECS, sparse_specs=SPARSE).close()
    with pytest.raises(IndexError_, match="index rebuild"):
        EmbeddedIndex(tmp_path / "e", SPECS)
    with pytest.raises(IndexError_, match="index rebuild"):
        EmbeddedIndex(tmp_path / "e", SPECS, sparse_specs=[SparseVectorSpec("words", "idf")])
    EmbeddedIndex(tmp_path / "e", SPECS, sparse_specs=SPARSE).close()  # the same layout opens
    # A dense-only index written before sparse vectors existed still opens dense-only.
    EmbeddedIndex(tmp_path / "d", SPECS).close()
    EmbeddedIndex(tmp_path / "d", SPECS).close()

    QdrantIndex(QdrantClient(path=str(tmp_path / "q")), "works", SPECS, SPARSE).close()
    with pytest.raises(IndexError_, match="sparse words \\(modifier idf\\)"):
        QdrantIndex(QdrantClient(path=str(tmp_path / "q")), "works", SPECS, [SparseVectorSpec("words", "idf")])
    with pytest.raises(IndexError_, match="sparse other"):
        QdrantIndex(QdrantClient(path=str(tmp_path / "q")), "works", SPECS, [SparseVectorSpec("other")])
    with pytest.raises(IndexError_, match="clip \\(32, cosine\\)"):
        QdrantIndex(QdrantClient(path=str(tmp_path / "q")), "works", [VectorSpec("clip", 32)])
    # A caller may use a subset of the collection's vectors.
    QdrantIndex(QdrantClient(path=str(tmp_path / "q")), "works", [PDQ_VECTOR], SPARSE[:1]).close()
    with pytest.raises(ValueError, match="used twice"):
        EmbeddedIndex(tmp_path / "x", SPECS, sparse_specs=[SparseVectorSpec("clip")])


def test_build_index_from_settings(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    ix = build_index(s, SPECS)
    assert isinstance(ix, EmbeddedIndex)
    assert ix.directory == tmp_path.resolve() / "index" / "works"
    ix.close()


def test_services_mode_refuses_the_folder_index(tmp_path: Path) -> None:
    """Machines that share only the services must not each keep CLIP points in their own folder."""
    from matching.errors import IndexError_

    s = load_settings(data_dir=tmp_path, shared={"kind": "services"})
    with pytest.raises(IndexError_, match="ARTWATCH_INDEX__BACKEND=server"):
        build_index(s, SPECS)
    assert not (tmp_path / "index").exists()


def test_embedded_index_refuses_other_vector_layout(tmp_path: Path) -> None:
    from matching.errors import IndexError_

    EmbeddedIndex(tmp_path, SPECS).close()
    with pytest.raises(IndexError_, match="index rebuild"):
        EmbeddedIndex(tmp_path, [VectorSpec("clip", 32)])


def test_embedded_index_survives_restart_and_builds_hnsw(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    ix = EmbeddedIndex(tmp_path, SPECS, hnsw_min_points=50)
    pts = [p for w in range(1, 61) for p in _work_points(rng, w, 1, n_pdq=0)]
    ix.upsert(pts)
    ix.close()
    again = EmbeddedIndex(tmp_path, SPECS, hnsw_min_points=50)
    assert again.count() == 60
    assert again.search("clip", pts[10].vectors["clip"], 1)[0].work_id == 11
    again.close()
