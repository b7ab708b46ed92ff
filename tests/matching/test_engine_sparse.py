"""The engine with candidates from the works' sparse visual words (``candidates = "sparse"``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from config.settings import load_settings
from matching.engine import Engine, WorkRef, build_engine
from matching.index import EmbeddedIndex, Hit, SparseVector
from matching.sparse_words import DIRECT_SLOT, WORDS_VECTOR, SparseWords
from tests.matching.test_engine import OWNER, WORKS, encode, logo_rgba, matches, scene, textured


def _sparse_engine(d: Path) -> Engine:
    index = EmbeddedIndex(d / "index" / "words", [], sparse_specs=[WORDS_VECTOR])
    return Engine(d, candidates="sparse", sparse=SparseWords(index))


def _points(e: Engine) -> list[Hit]:
    assert e.sparse is not None
    everything = SparseVector(np.arange(e.index.vocab.size if e.index.vocab else 1, dtype=np.uint32),
                              np.ones(e.index.vocab.size if e.index.vocab else 1, np.float32))
    return e.sparse.index.search_sparse(WORDS_VECTOR.name, everything, 1000)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("engine-sparse")
    e = _sparse_engine(d)
    for wid, img in WORKS.items():
        e.register(WorkRef(wid, OWNER[wid], "artwork"), encode(img, "PNG"))
    e.register(WorkRef(5, OWNER[5], "logo"), logo_rgba(5))
    assert e.sparse is not None
    e.sparse.index.close()
    return d


@pytest.fixture()
def engine(registry: Path) -> Engine:
    return _sparse_engine(registry)


def test_every_work_image_is_a_point_under_the_current_vocabulary(engine: Engine) -> None:
    engine.index.refresh()
    assert engine.index.vocab is not None
    pts = _points(engine)
    assert sorted({h.work_id for h in pts}) == [1, 2, 3, 4, 5] and len(pts) == 10
    assert {h.payload["vocab"] for h in pts} == {engine.index.vocab.version}


def test_copies_match_as_with_the_postings(engine: Engine, registry: Path) -> None:
    postings = Engine(registry)
    bg = scene(50)
    bg[200:380, 300:540] = cv2.resize(WORKS[3], (240, 180), interpolation=cv2.INTER_AREA)
    flipped = np.ascontiguousarray(WORKS[2][:, ::-1])
    uploads = {
        2: encode(cv2.resize(WORKS[2], (240, 180), interpolation=cv2.INTER_AREA), quality=60),
        1: encode(WORKS[1][60:300, 100:420], quality=85),
        3: encode(bg, quality=80),
        -2: encode(cv2.warpAffine(flipped, cv2.getRotationMatrix2D((240, 180), 12, 0.8), (480, 360)), quality=75),
    }
    for wid, data in uploads.items():
        got = engine.analyse(data)
        assert got and got[0].work_id == abs(wid) and got[0].match
        want = postings.analyse(data)
        assert [c.work_id for c in got if c.match] == [c.work_id for c in want if c.match]
        assert got[0].signals["inliers"] == want[0].signals["inliers"]
    for seed in (100, 101):
        assert not any(c.match for c in engine.analyse(encode(textured(seed), quality=80)))
    # The words alone rank the copied work among the best two images.
    engine.sparse_top = 2
    for wid, data in uploads.items():
        got = engine.analyse(data)
        assert got and got[0].work_id == abs(wid) and got[0].match


def test_owner_filter(engine: Engine) -> None:
    data = encode(WORKS[3], quality=85)
    assert matches(engine.analyse(data, owner_ids=[20]), 3)
    assert all(c.owner_id == 10 for c in engine.analyse(data, owner_ids=[10]))


def test_register_unregister_and_retrain_keep_the_words_in_step(tmp_path: Path) -> None:
    e = _sparse_engine(tmp_path)
    e.register(WorkRef(7, 1, "artwork"), encode(WORKS[1], "PNG"))
    e.register(WorkRef(8, 1, "artwork"), encode(WORKS[2], "PNG"))
    assert sorted(h.id for h in _points(e)) == sorted([7 * 64 + DIRECT_SLOT, 7 * 64 + DIRECT_SLOT + 1,
                                                       8 * 64 + DIRECT_SLOT, 8 * 64 + DIRECT_SLOT + 1])
    assert matches(e.analyse(encode(WORKS[1], quality=80)), 7)
    e.unregister(7)
    assert {h.work_id for h in _points(e)} == {8}
    assert not matches(e.analyse(encode(WORKS[1], quality=80)), 7)
    old = e.index.vocab
    e.retrain()
    assert e.index.vocab is not None and old is not None and e.index.vocab.version != old.version
    assert {h.payload["vocab"] for h in _points(e)} == {e.index.vocab.version}
    assert matches(e.analyse(encode(WORKS[2], quality=80)), 8)


def test_a_retrain_elsewhere_is_caught_at_query_time(tmp_path: Path) -> None:
    """A process on the postings alone retrains without writing words; the
    sparse engine sees hits under the old vocabulary and rewrites them."""
    e = _sparse_engine(tmp_path)
    e.register(WorkRef(1, 1, "artwork"), encode(WORKS[1], "PNG"))
    e.register(WorkRef(2, 1, "artwork"), encode(WORKS[2], "PNG"))
    other = Engine(tmp_path)
    other.retrain()
    assert matches(e.analyse(encode(WORKS[2], quality=80)), 2)
    assert e.index.vocab is not None
    assert {h.payload["vocab"] for h in _points(e)} == {e.index.vocab.version}


def test_build_engine_wires_the_setting(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path / "a", matching={"use_embedder": False, "candidates": "sparse"})
    e = build_engine(s)
    assert e.candidates == "sparse" and e.sparse is not None
    assert WORDS_VECTOR in e.sparse.index.sparse_specs
    default = build_engine(load_settings(data_dir=tmp_path / "b", matching={"use_embedder": False, "descriptor": ""}))
    assert default.candidates == "postings" and default.sparse is None
    assert not (tmp_path / "b" / "index").exists()  # no dense signal and no words: no index at all
    with pytest.raises(ValueError, match="needs the works' sparse vectors"):
        Engine(tmp_path / "c", candidates="sparse")
