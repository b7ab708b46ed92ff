"""One contract suite for every VectorIndex implementation.

Runs against the embedded index and qdrant-client's local mode always, and
against a real Qdrant server when ARTWATCH_TEST_QDRANT_URL is set (it is
skipped, with that reason, otherwise).
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
    VectorIndex,
    VectorSpec,
    build_index,
    pdq_to_vector,
    point_id,
)

SPECS = [VectorSpec("clip", 16, "cosine"), PDQ_VECTOR]
BACKENDS = ["embedded", "qdrant-local", "qdrant-server"]


def _unit(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    v = rng.standard_normal(n).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    from qdrant_client import QdrantClient

    ix: VectorIndex
    if request.param == "embedded":
        ix = EmbeddedIndex(tmp_path / "index", SPECS)
    elif request.param == "qdrant-local":
        ix = QdrantIndex(QdrantClient(path=str(tmp_path / "qlocal")), "works", SPECS)
    else:
        url = os.environ.get("ARTWATCH_TEST_QDRANT_URL")
        if not url:
            pytest.skip("ARTWATCH_TEST_QDRANT_URL not set: no Qdrant server to test against")
        ix = QdrantIndex(QdrantClient(url=url), f"test_{uuid.uuid4().hex[:8]}", SPECS)
    yield ix
    if request.param == "qdrant-server":
        assert isinstance(ix, QdrantIndex)
        ix.client.delete_collection(ix.collection)
    ix.close()


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
