"""`matching.replica.ordered_map`: the read-ahead a full load of the registry runs in threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from matching.replica import default_load_threads, ordered_map


def test_results_come_in_order_however_long_each_takes() -> None:
    def slow(i: int) -> int:
        time.sleep(0.002 * ((7 * i) % 5))  # later items often finish first
        return i * i

    items = list(range(40))
    assert list(ordered_map(slow, items, 4)) == [i * i for i in items]
    assert list(ordered_map(slow, items, 1)) == [i * i for i in items]


def test_calls_run_in_threads_and_no_more_than_a_window_ahead() -> None:
    lock = threading.Lock()
    running = started = 0
    most = 0
    names: set[str] = set()

    def f(i: int) -> int:
        nonlocal running, started, most
        with lock:
            running += 1
            started += 1
            most = max(most, running)
            names.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i

    gen = ordered_map(f, list(range(100)), 3)
    assert next(gen) == 0
    time.sleep(0.2)  # the consumer pauses: the pool must not run through all 100 items
    with lock:
        ahead = started
    assert ahead <= 2 * 3 + 1
    assert list(gen) == list(range(1, 100))
    assert most > 1 and most <= 3  # several at once, never more than the threads
    assert all(n.startswith("artwatch-load") for n in names)


def test_an_error_reaches_the_consumer_and_stops_the_rest() -> None:
    calls: list[int] = []

    def f(i: int) -> int:
        calls.append(i)
        if i == 5:
            raise OSError("disk went away")
        time.sleep(0.001)
        return i

    got: list[int] = []
    with pytest.raises(OSError, match="disk went away"):
        for x in ordered_map(f, list(range(1000)), 2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    assert len(calls) < 20  # the queue was dropped, not run to the end


def test_one_thread_runs_in_the_consumer_and_nothing_ahead() -> None:
    seen: list[str] = []

    def f(i: int) -> int:
        seen.append(threading.current_thread().name)
        return i

    gen = ordered_map(f, [1, 2, 3], 1)
    assert next(gen) == 1 and len(seen) == 1 and seen[0] == threading.current_thread().name


def test_the_setting_reaches_the_index(tmp_path: Path) -> None:
    from config.settings import load_settings
    from matching import build_engine

    off = {"use_embedder": False, "descriptor": ""}
    engine = build_engine(load_settings(data_dir=str(tmp_path), matching={**off, "load_threads": 3}))
    assert engine.index.load_threads == 3 and engine.index._threads() == 3
    auto = build_engine(load_settings(data_dir=str(tmp_path), matching=off))
    assert auto.index.load_threads == 0 and auto.index._threads() == default_load_threads()
    assert 1 <= default_load_threads() <= 4
    with pytest.raises(Exception, match="load_threads"):
        load_settings(data_dir=str(tmp_path), matching={**off, "load_threads": -1})


def test_the_per_image_arrays_grow_in_place_and_follow_the_images() -> None:
    """``_alive``, ``_owner`` and ``_nkp`` grow by doubling buffers (not a copy per
    image) and always hold each image's entry, across removals and a snapshot's
    arrays put in their place (which are never written to)."""
    import numpy as np

    from matching.postings import PostingsIndex
    from matching.vocabulary import Vocabulary
    from tests.matching.test_feature_store_contract import _work

    def check(ix: PostingsIndex, dropped: set[int]) -> None:
        n = len(ix._images)
        assert ix._alive.shape == (n,) and ix._owner.shape == (n,) and ix._nkp.shape == (n,)
        assert ix._owner.tolist() == [i.owner_id for i in ix._images]
        assert ix._nkp.tolist() == [i.n_kp for i in ix._images]
        assert ix._alive.tolist() == [i.work_id not in dropped for i in ix._images]

    rng = np.random.default_rng(0)
    ix = PostingsIndex(vocab=Vocabulary.train(rng.integers(0, 256, (2000, 128), dtype=np.uint8)))
    for wid in range(1, 701):  # 1,400 images: past the first buffer of 1,024
        ix._insert(_work(wid, n=4))
    ix._drop(5)
    ix._drop(650)
    check(ix, {5, 650})
    assert ix._image_bufs is not None and ix._alive.base is ix._image_bufs[0]
    assert ix._image_bufs[0].shape[0] >= 1400

    state = ix.export_state()
    frozen = {k: state[k].copy() for k in ("alive", "img_owner", "img_nkp")}
    for k in frozen:
        state[k].setflags(write=False)  # as a mapped snapshot's arrays are
    assert ix.vocab is not None
    again = PostingsIndex(vocab=ix.vocab)
    again.import_state(ix.vocab, state)
    for wid in range(701, 720):
        again._insert(_work(wid, n=4))
    again._drop(710)
    check(again, {5, 650, 710})
    for k, v in frozen.items():
        assert np.array_equal(state[k], v), k
