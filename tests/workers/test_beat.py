"""Beat entries: which sources are due, and the follow-up sweep."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Source
from workers import migrate


def _setup(settings: Settings) -> tuple[Any, sessionmaker[Session]]:
    """The configured Celery app (untyped) and a session factory on a fresh database."""
    from workers.app import configure
    from workers.runtime import set_runtime_settings

    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url())
    migrate.init_database(engine, settings)
    set_runtime_settings(settings)
    return configure(settings), make_sessionmaker(engine)


def test_due_polling_sources_are_queued_and_streaming_ones_left_to_their_consumer(test_settings: Settings) -> None:
    from workers import tasks
    from workers.broker import queue_depths

    app, sessions = _setup(test_settings)
    now = datetime.now(UTC)
    with session_scope(sessions) as s:
        s.add_all([
            Source(name="never-polled", kind="mastodon", url="https://m.example", poll_seconds=300),
            Source(name="recent", kind="rss", url="https://f.example/feed", poll_seconds=300,
                   last_success_at=now - timedelta(seconds=30)),
            Source(name="overdue", kind="rss", url="https://g.example/feed", poll_seconds=300,
                   last_success_at=now - timedelta(seconds=900)),
            Source(name="disabled", kind="rss", url="https://h.example/feed", enabled=False),
            Source(name="commons", kind="wikimedia", url="https://stream.example/v2/stream/recentchange"),
        ])
    assert tasks.crawl_due_sources.apply().get() == 2
    assert queue_depths(app, test_settings)["crawl"] == 2
    queued = set()
    for f in (test_settings.broker_dir() / "queue").iterdir():
        msg = json.loads(f.read_text())
        body = json.loads(base64.b64decode(msg["body"]))
        queued.add(body[0][0])
    with session_scope(sessions) as s:
        names = {src.id: src.name for src in s.scalars(select(Source))}
    assert {names[i] for i in queued} == {"never-polled", "overdue"}


def test_followup_sweep_runs_with_nothing_due(test_settings: Settings) -> None:
    from workers import tasks

    _setup(test_settings)
    assert tasks.run_followups.apply().get() == 0
