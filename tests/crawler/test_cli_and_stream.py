"""`artwatch sources` commands and the long-lived stream consumer."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from config.settings import CrawlerSettings, Settings
from crawler.cli import sources_group
from crawler.service import build_client
from crawler.stream import run_stream
from storage.models import Base, Source, Upload

from .servers import JetstreamServer, PayloadServer, Reply, sse_frames
from .test_source_contract import _wikimedia_events


@dataclass
class Obj:
    settings: Settings
    sessions: sessionmaker[Session]


@pytest.fixture
def sessions() -> sessionmaker[Session]:
    # One shared in-memory connection: no per-DDL fsync, visible to the stream thread.
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def run(sessions: sessionmaker[Session], tmp_path: Path) -> Any:
    obj = Obj(Settings(data_dir=tmp_path), sessions)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(sources_group, list(args), obj=obj, catch_exceptions=False)

    return invoke


def test_add_list_remove(run: Any, sessions: sessionmaker[Session]) -> None:
    r = run(
        "add", "pix", "mastodon", "https://pixelfed.social", "--param", "tag=art", "--every", "120"
    )
    assert r.exit_code == 0, r.output
    assert "added mastodon source 'pix'" in r.output
    r = run("add", "bsky", "bluesky", "wss://jetstream2.us-east.bsky.network/subscribe")
    assert r.exit_code == 0, r.output
    with sessions() as s:
        row = s.scalar(select(Source).where(Source.name == "pix"))
        assert (
            row is not None
            and row.params == {"tag": "art"}
            and row.poll_seconds == 120
            and row.enabled
        )
    listing = run("list")
    assert "pix\tmastodon\ton\tevery 120s\thttps://pixelfed.social tag=art" in listing.output
    assert "bsky\tbluesky\ton\tstream" in listing.output
    assert "last success: never" in listing.output
    data = json.loads(run("list", "--json").output)
    assert {d["name"] for d in data} == {"pix", "bsky"} and data[0]["backlog"] == 0
    assert run("remove", "pix").exit_code == 0
    assert [d["name"] for d in json.loads(run("list", "--json").output)] == ["bsky"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["add", "x", "myspace", "https://myspace.com"], "unknown source kind 'myspace'"),
        (["add", "x", "rss", "not a url"], "absolute http(s) URL"),
        (["add", "x", "mastodon", "https://m.test", "--param", "tag"], "expected KEY=VALUE"),
        (["add", "x", "reddit", "https://www.reddit.com/u/x"], "r/NAME"),
        (["remove", "nope"], "no source named 'nope'"),
    ],
)
def test_clear_errors(run: Any, args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 2 and message in r.output


def test_duplicate_name_refused(run: Any) -> None:
    assert run("add", "feed", "rss", "https://example.com/feed.xml").exit_code == 0
    r = run("add", "feed", "rss", "https://example.com/other.xml")
    assert r.exit_code == 2 and "already exists" in r.output


def test_help_texts(run: Any) -> None:
    for cmd in ("add", "list", "remove"):
        out = run(cmd, "--help").output
        assert "Usage:" in out
    assert "tag=NAME" in run("add", "--help").output


# -- run_stream ---------------------------------------------------------------


@pytest.fixture
def settings() -> CrawlerSettings:
    return CrawlerSettings(allow_internal=["127.0.0.1"], requests_per_second=0, obey_robots=False)


def _consume(
    sessions: sessionmaker[Session],
    sid: int,
    settings: CrawlerSettings,
    until: Any,
    timeout: float = 8.0,
) -> list[int]:
    got: list[int] = []
    stop = threading.Event()
    with build_client(settings) as client:
        t = threading.Thread(
            target=run_stream,
            args=(sessions, sid, client, got.append, stop),
            kwargs={"base_backoff": 0.05, "idle_timeout": 0.3},
            daemon=True,
        )
        t.start()
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(5)
        assert not t.is_alive()
    return got


def test_run_stream_reconnects_with_backoff_and_resumes(
    sessions: sessionmaker[Session], settings: CrawlerSettings
) -> None:
    http = PayloadServer().start()
    events = _wikimedia_events()
    upload = json.loads(events[-1][1])
    served: list[str | None] = []
    failures = {"left": 2}

    def stream(p: str, q: dict[str, str], h: dict[str, str]) -> Reply:
        served.append(h.get("last-event-id"))
        if failures["left"] > 0:
            failures["left"] -= 1
            return Reply(502, {}, b"bad gateway")
        return Reply(
            200,
            {"Content-Type": "text/event-stream"},
            stream=sse_frames(events, h.get("last-event-id"), hold=0.05),
        )

    http.routes["/stream"] = stream
    try:
        with sessions() as s:
            row = Source(name="wm", kind="wikimedia", url=http.url + "/stream", params={})
            s.add(row)
            s.commit()
            sid = row.id
        got = _consume(sessions, sid, settings, lambda g: len(g) >= 1)
        assert len(got) == 1
        with sessions() as s:
            stored = s.get(Source, sid)
            assert stored is not None and stored.cursor == {"last_event_id": events[-1][0]}
            assert s.scalar(select(func.count()).select_from(Upload)) == 1
        assert served[:2] == [None, None] and len(served) >= 3  # two failures, then reconnected
        # More events arrive; a new consumer resumes after the saved id and gets only those.
        for n in range(2):
            ev = dict(upload, title=f"File:Streamed {n}.jpg")
            events.append((f'[{{"offset":{n + 10**12}}}]', json.dumps(ev)))
        served.clear()
        got = _consume(sessions, sid, settings, lambda g: len(g) >= 2)
        assert len(got) == 2
        assert served[0] == events[-3][0]
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(Upload)) == 3
    finally:
        http.stop()


def test_run_stream_bluesky_records_error_then_recovers(
    sessions: sessionmaker[Session], settings: CrawlerSettings
) -> None:
    from .conftest import SITES

    ws = JetstreamServer().start()
    ws.events = [
        json.loads(line)
        for line in (SITES / "bluesky" / "commit_create_post_embed_images.jsonl")
        .read_text()
        .splitlines()
    ]
    ws.reject_next = 1
    try:
        with sessions() as s:
            row = Source(name="bsky", kind="bluesky", url=ws.url, params={})
            s.add(row)
            s.commit()
            sid = row.id
        got = _consume(sessions, sid, settings, lambda g: len(g) >= 2)
        assert len(got) == 2
        with sessions() as s:
            stored = s.get(Source, sid)
            assert stored is not None and stored.cursor == {
                "time_us": max(e["time_us"] for e in ws.events)
            }
            assert stored.last_error is None and stored.last_success_at is not None
        assert len(ws.connections) >= 2 and "cursor=" not in ws.connections[0]
    finally:
        ws.stop()


def test_import_from_toml(run: Any, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    conf = tmp_path / "sources.toml"
    conf.write_text(
        '[[source]]\nname = "pix"\nkind = "mastodon"\nurl = "https://pixelfed.social"\n'
        'params = { tag = "art" }\nevery = 600\n\n'
        '[[source]]\nname = "feed"\nkind = "rss"\nurl = "https://example.com/feed.xml"\n'
    )
    assert run("add", "old", "rss", "https://example.com/old.xml").exit_code == 0
    r = run("import", str(conf))
    assert r.exit_code == 0 and "2 added, 0 updated, 0 removed" in r.output
    r = run("import", str(conf), "--prune")
    assert "0 added, 2 updated, 1 removed" in r.output
    with sessions() as s:
        rows = {x.name: x for x in s.scalars(select(Source))}
        assert set(rows) == {"pix", "feed"}
        assert rows["pix"].params == {"tag": "art"} and rows["pix"].poll_seconds == 600
    conf.write_text('[[source]]\nname = "bad"\nkind = "myspace"\nurl = "https://x"\n')
    r = run("import", str(conf))
    assert r.exit_code == 2 and "unknown source kind" in r.output
