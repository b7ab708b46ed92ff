"""Maintenance off the request path: retrains and snapshots run as tasks.

Real parts: a private redis-server, SQLite, real ``artwatch worker`` processes
on the ``maintenance`` queue. The engines in this process stand for the web
app (built by ``create_app``'s factory) and for other searching processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.settings import Settings, load_settings
from matching import replica as local
from matching.engine import Engine
from matching.vocabulary import Vocabulary
from storage.blobs import FolderBlobStore
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Base
from tests.matching.test_engine import encode, textured

from .conftest import RedisServer, wait_for


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def _settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str = "", *, schema: bool = True
) -> Settings:
    for key in list(os.environ):
        if key.startswith("ARTWATCH_") and not key.startswith("ARTWATCH_TEST_"):
            monkeypatch.delenv(key)
    for k, v in {
        "ARTWATCH_DATA_DIR": str(tmp_path / "data"),
        "ARTWATCH_BROKER_URL": broker_url,
        "ARTWATCH_MATCHING__USE_EMBEDDER": "false",
        "ARTWATCH_MATCHING__CLIP_PRETRAINED": "",
        "ARTWATCH_WEB__SECRET_KEY": "maintenance-tests-secret",
    }.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not schema:
        return settings
    db = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(db)
    db.dispose()
    return settings


def _web_engine(settings: Settings) -> Engine:
    """The engine the web app builds for its registrations."""
    from webapp.app import create_app

    engine: Engine = create_app(settings).state.ctx.engine
    return engine


def _register(settings: Settings, engine: Any, seeds: range) -> None:
    """Register works through the same domain function the web, the API and the CLI call."""
    from registry.service import ensure_owner, register_work

    db = make_engine(settings.resolved_database_url())
    with session_scope(make_sessionmaker(db)) as s:
        owner = ensure_owner(s, email="artist@example.com")
        for seed in seeds:
            register_work(s, FolderBlobStore(settings.blob_dir()), engine, owner_id=owner.id,
                          data=encode(textured(seed), "PNG"), filename=f"w{seed}.png")
    db.dispose()


def _queued(settings: Settings) -> list[str]:
    """Task names waiting on the maintenance queue (Redis)."""
    import redis

    r = redis.Redis.from_url(settings.broker_url)
    return [json.loads(m)["headers"]["task"] for m in r.lrange("maintenance", 0, -1)]


def _vocab_lines(settings: Settings) -> list[str]:
    journal = settings.data_dir / "features" / "journal.log"
    return [ln for ln in journal.read_text().splitlines() if ln.startswith("vocab ")]


def _first_work_trained(settings: Settings) -> str:
    """One work registered where no worker runs (inline): trained on 1 work."""
    first = Engine(settings.data_dir)
    _register(settings, first, range(1, 2))
    assert first.index.vocab is not None
    return first.index.vocab.version


def test_a_registration_that_makes_a_retrain_due_returns_without_it_and_queues_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    settings = _settings(tmp_path, monkeypatch, redis_server.url)
    trained = _first_work_trained(settings)
    web = _web_engine(settings)
    _register(settings, web, range(2, 4))
    assert _queued(settings) == []  # 3 works: not due yet (4x the 1 it was trained on)
    _register(settings, web, range(4, 5))  # the 4th work makes a retrain due
    assert web.index.vocab is not None and web.index.vocab.version == trained  # not retrained here
    assert _vocab_lines(settings) == [f"vocab {trained} 1"]
    assert _queued(settings) == ["artwatch.retrain_vocabulary"]
    assert 4 in web.index.work_ids  # searchable at once on the current vocabulary
    _register(settings, web, range(5, 9))  # a burst queues nothing more while one is pending
    assert _queued(settings) == ["artwatch.retrain_vocabulary"]


def test_the_first_vocabulary_is_trained_where_the_first_work_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    """Even with a worker to take retrains: until a vocabulary exists nothing is
    searchable, so a copy analysed before the queued task ran would be missed."""
    settings = _settings(tmp_path, monkeypatch, redis_server.url)
    web = _web_engine(settings)
    _register(settings, web, range(1, 2))
    assert web.index.vocab is not None and 1 in web.index.work_ids
    assert _queued(settings) == []
    assert _vocab_lines(settings) == [f"vocab {web.index.vocab.version} 1"]
    found = web.analyse(encode(textured(1), "JPEG"))
    assert [c.work_id for c in found if c.match] == [1]


def test_without_a_worker_to_take_it_the_folder_broker_retrains_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, monkeypatch)
    trained = _first_work_trained(settings)
    web = _web_engine(settings)
    _register(settings, web, range(2, 5))
    assert web.index.vocab is not None and web.index.vocab.version != trained
    assert not (settings.broker_dir() / "maintenance" / "retrain.pending").exists()


def test_with_a_live_worker_on_the_folder_broker_the_retrain_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.broker import queue_depths, start_heartbeat

    settings = _settings(tmp_path, monkeypatch)
    trained = _first_work_trained(settings)
    stop = start_heartbeat(settings, "w1@test", ["analyse", "maintenance"])
    try:
        wait_for((settings.broker_dir() / "workers" / "w1@test").exists, 10, "a heartbeat")
        web = _web_engine(settings)
        _register(settings, web, range(2, 5))
        assert web.index.vocab is not None and web.index.vocab.version == trained
        from workers.app import app

        assert queue_depths(app, settings)["maintenance"] == 1
    finally:
        stop.set()


def _start_worker(settings: Settings, tmp_path: Path, *args: str) -> Any:
    import subprocess
    import sys

    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen([sys.executable, "-m", "workers", "worker", "-Q", "maintenance", *args],
                            env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _stop(proc: Any, log: Any) -> None:
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_a_worker_runs_queued_retrains_one_at_a_time_and_other_processes_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    settings = _settings(tmp_path, monkeypatch, redis_server.url)
    trained = _first_work_trained(settings)
    web = _web_engine(settings)
    _register(settings, web, range(2, 5))
    from workers.app import app

    app.send_task("artwatch.retrain_vocabulary")  # a second one, queued at the same time
    assert _queued(settings) == ["artwatch.retrain_vocabulary"] * 2
    other = Engine(settings.data_dir)  # another searching process
    proc, log = _start_worker(settings, tmp_path, "-c", "2")
    try:
        wait_for(lambda: len(_vocab_lines(settings)) > 1, 180, "the worker's retrain")

        def second_done() -> str:
            text = (tmp_path / "worker.log").read_text(errors="replace")
            return text if "maintenance retrain: nothing due" in text else ""

        text = wait_for(second_done, 120, "the second task")
    finally:
        _stop(proc, log)
    assert "maintenance retrain: done" in text, text[-3000:]
    lines = _vocab_lines(settings)
    assert len(lines) == 2, lines  # two tasks, one retrain
    new = lines[-1].split()[1]
    assert new != trained and lines[-1].endswith(" 4")
    for engine in (web, other):  # both pick up the new vocabulary on their next query
        engine.analyse(encode(textured(3)[40:300, 60:420], quality=85))
        assert engine.index.vocab is not None and engine.index.vocab.version == new
        assert engine.index.work_ids == [1, 2, 3, 4]
    assert _queued(settings) == []


def test_a_searching_process_queues_the_snapshot_and_the_task_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    settings = _settings(tmp_path, monkeypatch, redis_server.url)
    first = Engine(settings.data_dir)
    _register(settings, first, range(1, 5))
    first.retrain()  # trained on 4 works, snapshotted
    pointer = next((settings.data_dir / "features" / "snapshots").glob("*.json"))
    before = json.loads(pointer.read_text())["offset"]
    monkeypatch.setattr(local, "SNAPSHOT_EVERY", 2)  # in this process: 2 changes make one due
    writes: list[int] = []
    real = local.LocalIndex._write_snapshot_locked

    def counted(self: local.LocalIndex, vocab: Vocabulary) -> None:
        writes.append(self._offset)
        real(self, vocab)

    monkeypatch.setattr(local.LocalIndex, "_write_snapshot_locked", counted)
    from workers.maintenance import maintenance_hook
    from workers.runtime import set_runtime_settings

    set_runtime_settings(settings)
    searcher = Engine(settings.data_dir, maintenance=maintenance_hook(settings))  # as a worker builds it
    from workers.maintenance import DeferredMaintenance

    # Registered by another process (which leaves the snapshot to others).
    _register(settings, Engine(settings.data_dir, maintenance=DeferredMaintenance()), range(5, 7))
    cands = searcher.analyse(encode(textured(5)[40:300, 60:420], quality=85))  # the query replays them
    assert [c.work_id for c in cands if c.match] == [5]
    assert writes == []  # no snapshot written during the query
    assert json.loads(pointer.read_text())["offset"] == before
    assert _queued(settings) == ["artwatch.write_snapshot"]
    proc, log = _start_worker(settings, tmp_path, "-c", "1", "--pool", "solo")
    try:
        wait_for(lambda: json.loads(pointer.read_text())["offset"] > before, 120, "the task's snapshot")
    finally:
        _stop(proc, log)
    meta = json.loads(pointer.read_text())
    assert meta["works"] == 6
    assert meta["offset"] == (settings.data_dir / "features" / "journal.log").stat().st_size
    restored = Engine(settings.data_dir)
    assert restored.index.work_ids == [1, 2, 3, 4, 5, 6]
    got, want = restored.index.work(5), searcher.index.work(5)
    assert got is not None and want is not None
    np.testing.assert_array_equal(got.pdq, want.pdq)


def test_works_import_without_a_worker_trains_the_first_vocabulary_then_once_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark harness's path (no broker consumer): the first work trains
    the first vocabulary (so works are searchable during the import), the
    per-work retrains after it are deferred to the import's one retrain on
    every work, which main also ran last; the vocabulary and the decisions come
    out the same."""
    from click.testing import CliRunner
    from PIL import Image

    from workers.cli import cli

    ds = tmp_path / "ds"
    ds.mkdir()
    with (ds / "works.jsonl").open("w") as f:
        for seed in range(1, 6):
            Image.fromarray(textured(seed)).save(ds / f"w{seed}.png")
            f.write(json.dumps({"id": f"w{seed}", "file": f"w{seed}.png", "owner": "o1"}) + "\n")
    settings = _settings(tmp_path, monkeypatch, schema=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["init"], catch_exceptions=False).exit_code == 0
    res = runner.invoke(cli, ["works", "import", str(ds / "works.jsonl")], catch_exceptions=False)
    assert res.exit_code == 0 and "imported 5 works" in res.output, res.output
    lines = _vocab_lines(settings)
    # The first vocabulary (1 work), then one retrain on every work.
    assert len(lines) == 2 and lines[0].endswith(" 1") and lines[1].endswith(" 5"), lines
    # main's path: a retrain at each threshold while registering, then the final one.
    old = Engine(tmp_path / "old")
    from matching.engine import WorkRef

    for seed in range(1, 6):
        old.register(WorkRef(seed, 1, "artwork"), (ds / f"w{seed}.png").read_bytes())
    assert len([ln for ln in (tmp_path / "old" / "features" / "journal.log").read_text().splitlines()
                if ln.startswith("vocab ")]) == 2  # at 1 and at 4 works
    old.retrain()
    new = Engine(settings.data_dir)
    assert new.index.vocab is not None and old.index.vocab is not None
    np.testing.assert_array_equal(new.index.vocab.coarse, old.index.vocab.coarse)
    np.testing.assert_array_equal(new.index.vocab.fine, old.index.vocab.fine)
    for seed in (2, 4, 99):
        data = encode(textured(seed)[30:320, 50:430], quality=80)
        assert [(c.work_id, c.match, round(c.score, 6)) for c in new.analyse(data)] == \
            [(c.work_id, c.match, round(c.score, 6)) for c in old.analyse(data)]
