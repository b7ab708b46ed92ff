"""The stalled-upload sweep: pending uploads whose message was lost are queued
again (once per stall_after_s), then dead-lettered; nothing else is touched."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from config.settings import Settings, WorkersSettings
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import DeadLetter, Upload, UploadStatus
from workers import migrate
from workers.stalled import stalled_uploads

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _uploads(session: object, rows: dict[str, dict[str, object]]) -> dict[str, int]:
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    made = {name: Upload(canonical_url=f"https://img.example/{name}.jpg", **fields) for name, fields in rows.items()}
    session.add_all(made.values())
    session.flush()
    return {name: up.id for name, up in made.items()}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_sweep_requeues_only_stalled_pending_uploads_then_dead_letters(engine: Engine, database_url: str,
                                                                       tmp_path: Path) -> None:
    migrate.init_database(engine, Settings(data_dir=tmp_path / "data", database_url=database_url))
    sessions = make_sessionmaker(engine)
    workers = WorkersSettings(stall_after_s=600, max_redispatches=2)
    old, fresh = T0 - timedelta(hours=1), T0 - timedelta(minutes=5)
    with session_scope(sessions) as s:
        ids = _uploads(s, {
            "lost": {"created_at": old},
            "fresh": {"created_at": fresh},
            "done": {"created_at": old, "status": UploadStatus.ANALYSED},
            "failed": {"created_at": old, "status": UploadStatus.FAILED},
            "gone": {"created_at": old, "deleted_at": fresh},
            "requeued-lately": {"created_at": old, "redispatched_at": fresh, "redispatches": 1},
        })
    def sweep(at: datetime) -> list[int]:
        with session_scope(sessions) as s:
            return stalled_uploads(s, workers, now=at)

    assert sweep(T0) == [ids["lost"]]
    # Re-queued just now: not again until stall_after_s has passed once more.
    assert sweep(T0 + timedelta(seconds=60)) == []
    # Oldest first (created or last re-queued), then by id.
    assert sweep(T0 + timedelta(seconds=601)) == [ids["fresh"], ids["requeued-lately"], ids["lost"]]
    # A third re-queue would exceed max_redispatches = 2: dead letters instead.
    assert sweep(T0 + timedelta(seconds=1300)) == [ids["fresh"]]
    assert sweep(T0 + timedelta(hours=5)) == []
    assert sweep(T0 + timedelta(days=5)) == []
    with session_scope(sessions) as s:
        letters = {d.args[0]: d for d in s.scalars(select(DeadLetter))}
        assert sorted(letters) == sorted([ids["lost"], ids["requeued-lately"], ids["fresh"]])
        assert all(d.task == "artwatch.fetch_upload" and d.args == [i] for i, d in letters.items())
        assert "still pending after 2 re-queues" in letters[ids["lost"]].error
        ups = {u.id: u for u in s.scalars(select(Upload))}
        assert ups[ids["lost"]].status == UploadStatus.PENDING  # left for `deadletters replay`
        assert ups[ids["lost"]].redispatches == 3
        for name in ("done", "failed", "gone"):
            assert ups[ids[name]].redispatches == 0 and ups[ids[name]].redispatched_at is None, name


def test_sweep_is_off_at_zero(test_settings: Settings) -> None:
    test_settings.data_dir.mkdir(parents=True)
    engine = make_engine(test_settings.resolved_database_url())
    migrate.init_database(engine, test_settings)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        _uploads(s, {"lost": {"created_at": T0 - timedelta(days=3)}})
    with session_scope(sessions) as s:
        assert stalled_uploads(s, WorkersSettings(stall_after_s=0), now=T0) == []


def test_beat_task_queues_the_fetch(test_settings: Settings) -> None:
    from workers import tasks
    from workers.broker import queue_depths

    from .test_beat import _setup

    app, sessions = _setup(test_settings)
    assert app.conf.beat_schedule["redispatch-stalled"]["task"] == "artwatch.redispatch_stalled"
    with session_scope(sessions) as s:
        ids = _uploads(s, {"lost": {"created_at": datetime.now(UTC) - timedelta(hours=3)},
                           "new": {"created_at": datetime.now(UTC)}})
    assert tasks.redispatch_stalled.apply().get() == 1
    assert queue_depths(app, test_settings)["fetch"] == 1
    [f] = (test_settings.broker_dir() / "queue").iterdir()
    msg = json.loads(f.read_text())
    assert msg["headers"]["task"] == "artwatch.fetch_upload"
    assert json.loads(base64.b64decode(msg["body"]))[0] == [ids["lost"]]


def test_status_counts_the_requeued_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from config.settings import load_settings
    from workers.cli import cli

    monkeypatch.setenv("ARTWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ARTWATCH_CONFIG", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["init"], catch_exceptions=False).exit_code == 0
    db = make_engine(load_settings().resolved_database_url())
    with session_scope(make_sessionmaker(db)) as s:
        _uploads(s, {"a": {}, "b": {}})
    out = runner.invoke(cli, ["status"], catch_exceptions=False)
    assert "2 pending," in out.output and "re-queued" not in out.output
    with session_scope(make_sessionmaker(db)) as s:
        assert stalled_uploads(s, WorkersSettings(stall_after_s=1), now=datetime.now(UTC) + timedelta(seconds=5))
    db.dispose()
    out = runner.invoke(cli, ["status"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "2 pending, 2 of them re-queued after a lost message" in out.output
    assert '"requeued": 2' in runner.invoke(cli, ["status", "--json"], catch_exceptions=False).output


def test_beat_task_waits_while_the_pipeline_has_a_backlog(test_settings: Settings,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import load_settings
    from workers import tasks
    from workers.broker import queue_depths

    from .test_beat import _setup

    monkeypatch.setenv("ARTWATCH_WORKERS__STALL_MAX_BACKLOG", "1")  # beside test_settings' environment
    settings = load_settings()
    app, sessions = _setup(settings)
    old = datetime.now(UTC) - timedelta(hours=3)
    with session_scope(sessions) as s:
        _uploads(s, {"a": {"created_at": old}, "b": {"created_at": old}})
    assert tasks.redispatch_stalled.apply().get() == 2  # nothing queued yet: both re-queued
    with session_scope(sessions) as s:
        _uploads(s, {"c": {"created_at": old}})
    # Two fetches now wait in their queue, more than the backlog of 1 the sweep tolerates.
    assert tasks.redispatch_stalled.apply().get() == 0
    assert queue_depths(app, settings)["fetch"] == 2
    with session_scope(sessions) as s:
        assert {u.canonical_url.rsplit("/", 1)[1]: u.redispatches for u in s.scalars(select(Upload))} == {
            "a.jpg": 1, "b.jpg": 1, "c.jpg": 0}
