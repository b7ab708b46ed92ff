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
