"""The whole pipeline on real parts: a real worker process, a real broker
(Redis, and the embedded folder broker), a real HTTP site on 127.0.0.1.

Register one work, crawl a site holding one transformed copy of it and one
unrelated image: exactly one match, one draft notice and one alert email (to a
real SMTP server). Crawling again creates no duplicate upload, match, notice
or email, and nothing ends in the dead-letter table.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from config.settings import Settings, load_settings
from crawler.localsite import LocalSite
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Account, DeadLetter, Match, Notice, NoticeItem, Upload, UploadStatus
from workers.demo import painting, photo
from workers.run import wait_until_settled, worker_process

pytestmark = pytest.mark.slow


def _jpeg(img: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=q)
    return buf.getvalue()


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "workers", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"artwatch {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def site() -> Iterator[LocalSite]:
    work = painting(314)
    copy = work.crop((60, 40, 700, 540)).resize((512, 400))
    with LocalSite() as s:
        s.add_post(_jpeg(copy, 75), content_type="image/jpeg", text="look what I made", author="copier")
        s.add_post(_jpeg(photo(2718), 85), content_type="image/jpeg", text="holiday", author="hiker")
        yield s


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 OK"


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Inbox]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 for the owner's alert email."""
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    handler = _Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("ARTWATCH_NOTICES__SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("ARTWATCH_NOTICES__SMTP_PORT", str(port))
    monkeypatch.setenv("ARTWATCH_WEB__SECRET_KEY", "e2e-test-secret-key")
    yield handler
    controller.stop()


@pytest.fixture
def registered(test_settings: Settings, tmp_path: Path, site: LocalSite, inbox: _Inbox) -> Settings:
    work_file = tmp_path / "dusk.png"
    painting(314).save(work_file)
    cli("init")
    cli("works", "add", str(work_file), "--owner", "artist@example.com", "--create-owner", "--title", "Dusk")
    cli("sources", "add", "site", "mastodon", site.url)
    engine = make_engine(test_settings.resolved_database_url())
    with session_scope(make_sessionmaker(engine)) as s:
        owner = s.scalar(select(Account).where(Account.email == "artist@example.com"))
        assert owner is not None
        owner.legal_name, owner.postal_address, owner.phone = "A. Artist", "1 High St, Town", "+1 555 0100"
    engine.dispose()
    return test_settings


def _counts(settings: Settings) -> dict[str, int]:
    engine = make_engine(settings.resolved_database_url())
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            return {
                "uploads": s.scalar(select(func.count(Upload.id))) or 0,
                "analysed": s.scalar(select(func.count(Upload.id)).where(Upload.status == UploadStatus.ANALYSED)) or 0,
                "matches": s.scalar(select(func.count(Match.id))) or 0,
                "notices": s.scalar(select(func.count(Notice.id))) or 0,
                "items": s.scalar(select(func.count(NoticeItem.id))) or 0,
            }
    finally:
        engine.dispose()


def _assert_one_match_one_notice(settings: Settings, site: LocalSite, inbox: _Inbox) -> None:
    c = _counts(settings)
    assert c == {"uploads": 2, "analysed": 2, "matches": 1, "notices": 1, "items": 1}, c
    assert [rcpt for rcpt, _ in inbox.messages] == [["artist@example.com"]]
    engine = make_engine(settings.resolved_database_url())
    with session_scope(make_sessionmaker(engine)) as s:
        dead = [(d.task, d.error) for d in s.scalars(select(DeadLetter))]
        assert dead == []
        m = s.scalar(select(Match))
        assert m is not None and m.upload.author.startswith("copier")
        item = s.scalar(select(NoticeItem))
        assert item is not None and item.url.startswith(site.url)
    engine.dispose()


def test_redis_broker_and_real_worker(registered: Settings, site: LocalSite, redis_server_url: str,
                                      inbox: _Inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    redis.Redis.from_url(redis_server_url).flushdb()
    monkeypatch.setenv("ARTWATCH_BROKER_URL", redis_server_url)
    settings = load_settings()
    engine = make_engine(settings.resolved_database_url())
    sessions = make_sessionmaker(engine)
    with worker_process(settings) as proc:
        for _ in range(2):  # the second crawl must add nothing
            since = datetime.now(UTC)
            cli("crawl")
            assert wait_until_settled(settings, sessions, since, timeout=180, proc=proc)
            _assert_one_match_one_notice(settings, site, inbox)
    engine.dispose()


def test_embedded_mode_run_command(registered: Settings, site: LocalSite, inbox: _Inbox) -> None:
    for _ in range(2):
        out = cli("run", "--no-web", "--timeout", "180")
        assert "matches:                1" in out.stdout, out.stdout + out.stderr
        _assert_one_match_one_notice(registered, site, inbox)
