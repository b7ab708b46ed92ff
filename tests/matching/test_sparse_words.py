"""Works' visual words as BM25 sparse vectors (matching.sparse_words)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matching.features import LocalFeatures, StoredWork
from matching.index import EmbeddedIndex, SparseVectorSpec, VectorSpec, point_id
from matching.postings import PostingsIndex
from matching.sparse_words import (
    BM25_B,
    BM25_K1,
    DIRECT_SLOT,
    MIRROR_SLOT,
    REFERENCE_WORDS,
    WORDS_VECTOR,
    SparseWords,
    document_vector,
    postings_points,
    query_vector,
    work_points,
)
from matching.vocabulary import Vocabulary


def _features(rng: np.random.Generator, n: int, centres: np.ndarray) -> LocalFeatures:
    """``n`` descriptors scattered around a work's own cluster centres."""
    desc = centres[rng.integers(0, centres.shape[0], n)] + rng.normal(0, 3, (n, 128))
    return LocalFeatures(rng.uniform(0, 300, (n, 2)).astype(np.float32), rng.uniform(2, 8, n).astype(np.float32),
                         rng.uniform(0, 360, n).astype(np.float32), np.clip(desc, 0, 255).astype(np.uint8), 320, 240)


def _works(n: int, seed: int = 0) -> list[StoredWork]:
    rng = np.random.default_rng(seed)
    out = []
    for w in range(1, n + 1):
        centres = rng.uniform(0, 120, (12, 128))
        out.append(StoredWork(w, 100 + w % 3, "logo", 320, 240, _features(rng, 150, centres),
                              _features(rng, 90, centres)))
    return out


@pytest.fixture(scope="module")
def registry() -> tuple[Vocabulary, list[StoredWork]]:
    works = _works(12)
    desc = np.concatenate([w.direct.desc for w in works] + [w.mirrored.desc for w in works])
    return Vocabulary.train(desc, seed=3), works


def _postings(vocab: Vocabulary, works: list[StoredWork]) -> PostingsIndex:
    arrays = PostingsIndex(vocab=vocab)
    for w in works:
        arrays._insert(w)
    return arrays


def test_document_vector_is_bm25_tf() -> None:
    words = np.array([7, 7, 7, 3, 9, 9], np.int32)
    v = document_vector(words, n_keypoints=2000)
    assert v.indices.tolist() == [3, 7, 9]
    norm = BM25_K1 * (1 - BM25_B + BM25_B * 2000 / REFERENCE_WORDS)
    want = [tf * (BM25_K1 + 1) / (tf + norm) for tf in (1, 3, 2)]
    assert v.values.tolist() == pytest.approx(want, rel=1e-6)
    # Saturation: three times the count is far less than three times the weight.
    assert v.values[1] < 2 * v.values[0]
    # A longer image weighs the same count less.
    assert document_vector(words, 500).values[1] > document_vector(words, 4000).values[1]
    assert len(document_vector(np.zeros(0, np.int32), 0)) == 0


def test_query_vector_counts_words() -> None:
    v = query_vector(np.array([5, 1, 5, 5, 2], np.int32))
    assert v.indices.tolist() == [1, 2, 5] and v.values.tolist() == [1.0, 1.0, 3.0]


def test_work_points_hold_the_postings_words(registry: tuple[Vocabulary, list[StoredWork]]) -> None:
    vocab, works = registry
    w = works[4]
    direct, mirrored = work_points(vocab, w)
    assert (direct.id, mirrored.id) == (point_id(w.work_id, DIRECT_SLOT), point_id(w.work_id, MIRROR_SLOT))
    assert direct.payload == {"work_id": w.work_id, "owner_id": w.owner_id, "kind": "logo", "signal": "words",
                              "mirrored": False, "vocab": vocab.version}
    assert mirrored.payload["mirrored"] is True
    words = vocab.assign(w.direct.desc)[2]
    assert direct.sparse["words"].indices.tolist() == sorted(set(words.tolist()))
    assert direct.vectors == {}


def test_points_from_postings_equal_points_from_features(registry: tuple[Vocabulary, list[StoredWork]]) -> None:
    """The rewrite after a retrain (from the postings in memory) writes what
    registration (from the work's descriptors) writes."""
    vocab, works = registry
    ix = _postings(vocab, works)
    ix._drop(works[2].work_id)  # a removed work is not written
    got = {p.id: p for p in postings_points(ix)}
    want = {p.id: p for w in works if w.work_id != works[2].work_id for p in work_points(vocab, w)}
    assert sorted(got) == sorted(want)
    for pid, p in want.items():
        assert got[pid].payload == p.payload
        assert got[pid].sparse["words"].indices.tolist() == p.sparse["words"].indices.tolist()
        assert got[pid].sparse["words"].values == pytest.approx(p.sparse["words"].values, rel=1e-6)
    assert postings_points(PostingsIndex()) == []


def test_candidates_find_the_copied_work(tmp_path: Path, registry: tuple[Vocabulary, list[StoredWork]]) -> None:
    vocab, works = registry
    sw = SparseWords(EmbeddedIndex(tmp_path, [], sparse_specs=[WORDS_VECTOR]))
    for w in works:
        assert sw.register(vocab, w) == 2
    rng = np.random.default_rng(9)
    for target in (works[0], works[7]):
        f = target.direct
        keep = rng.choice(len(f), 60, replace=False)
        q = LocalFeatures(f.xy[keep], f.scale[keep], f.angle[keep],
                          np.clip(f.desc[keep] + rng.normal(0, 2, (60, 128)), 0, 255).astype(np.uint8), 320, 240)
        found, stale = sw.candidates(vocab, q, limit=6, n_coarse=2, n_fine=2)
        assert not stale and found[0] == target.work_id
        owned, _ = sw.candidates(vocab, q, limit=6, owner_ids=[(target.owner_id + 1) % 3 + 100])
        assert target.work_id not in owned and owned
    assert sw.candidates(vocab, LocalFeatures.empty(10, 10), limit=5) == ([], False)
    sw.unregister(works[0].work_id)
    assert sw.index.count() == 2 * (len(works) - 1)
    sw.index.close()


def test_hits_under_another_vocabulary_are_stale(tmp_path: Path,
                                                 registry: tuple[Vocabulary, list[StoredWork]]) -> None:
    vocab, works = registry
    sw = SparseWords(EmbeddedIndex(tmp_path, [], sparse_specs=[WORDS_VECTOR]))
    for w in works:
        sw.register(vocab, w)
    newer = Vocabulary.train(np.concatenate([w.direct.desc for w in works]), seed=4)
    q = works[3].direct
    found, stale = sw.candidates(newer, q, limit=8)
    assert stale and found == []
    assert sw.rewrite(_postings(newer, works)) == 2 * len(works)
    found, stale = sw.candidates(newer, q, limit=8)
    assert not stale and found[0] == works[3].work_id
    sw.index.close()


def test_an_index_without_the_words_vector_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sparse vector"):
        SparseWords(EmbeddedIndex(tmp_path / "a", [VectorSpec("clip", 4)]))
    with pytest.raises(ValueError, match="no sparse vector"):
        SparseWords(EmbeddedIndex(tmp_path / "b", [], sparse_specs=[SparseVectorSpec("words")]))
