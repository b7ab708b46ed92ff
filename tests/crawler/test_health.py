"""Source health: a refused internal address is reported with the setting that opts in,
and ``artwatch run``'s summary lists the sources that failed during the run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import CrawlerSettings
from crawler.health import ALLOW_INTERNAL_HINT, failure_hint, source_health
from crawler.localsite import LocalSite
from crawler.service import build_client, poll_source
from storage.models import Base, Source, Upload, UploadStatus
from workers.run import _summary, summary_lines

from .conftest import png


def _sessions() -> sessionmaker[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _poll(sessions: sessionmaker[Session], name: str, url: str, settings: CrawlerSettings) -> None:
    with sessions() as s, build_client(settings) as client:
        row = Source(name=name, kind="mastodon", url=url, params={})
        s.add(row)
        s.flush()
        poll_source(s, row, client, settings)
        s.commit()


def test_internal_address_refusal_is_reported_with_how_to_opt_in(site: LocalSite) -> None:
    site.add_post(png(1))
    sessions = _sessions()
    since = datetime.now(UTC) - timedelta(seconds=1)
    # Default settings: loopback is not on allow_internal, so the poll is refused.
    _poll(sessions, "local-refused", site.url, CrawlerSettings(requests_per_second=0))
    _poll(sessions, "local-ok", site.url, CrawlerSettings(requests_per_second=0, allow_internal=["127.0.0.1"]))
    with sessions() as s:
        by_name = {h.name: h for h in source_health(s)}
    refused, ok = by_name["local-refused"], by_name["local-ok"]
    assert refused.failing and (refused.last_error or "").startswith("BlockedAddress:")
    assert refused.hint == ALLOW_INTERNAL_HINT and "crawler.allow_internal" in refused.hint
    assert "crawler.allow_internal" in refused.describe() and "local-refused (mastodon) failed" in refused.describe()
    assert not ok.failing and ok.last_success_at is not None and ok.hint == ""
    assert ok.backlog == 1 and refused.backlog == 0  # the good poll's upload waits for its fetch

    summary = _summary(sessions, since)
    assert [f["name"] for f in summary["sources_failed"]] == ["local-refused"]
    assert summary["sources_failed"][0]["hint"] == ALLOW_INTERNAL_HINT
    assert "crawler.allow_internal" in summary["sources_failed_lines"][0]
    printed = summary_lines(summary, sources=2, settled=True, timeout=60)
    assert printed[0] == "summary - 1 of 2 sources failed, see below"
    assert "  sources failed:         1 of 2" in printed
    assert any("local-refused (mastodon) failed: BlockedAddress" in ln and "allow_internal" in ln for ln in printed)
    # A failure recorded before the run started is not this run's failure.
    later = _summary(sessions, datetime.now(UTC) + timedelta(seconds=5))
    assert later["sources_failed"] == []
    assert summary_lines(later, sources=2, settled=True, timeout=60)[0] == "summary"


def test_backlog_counts_only_pending_uploads_per_source() -> None:
    sessions = _sessions()
    with sessions() as s:
        a, b = Source(name="a", kind="rss", url="https://a.example/"), Source(name="b", kind="rss", url="https://b.example/")
        s.add_all([a, b])
        s.flush()
        s.add_all([
            Upload(canonical_url="https://a.example/1", source_id=a.id, status=UploadStatus.PENDING),
            Upload(canonical_url="https://a.example/2", source_id=a.id, status=UploadStatus.PENDING),
            Upload(canonical_url="https://a.example/3", source_id=a.id, status=UploadStatus.ANALYSED),
            Upload(canonical_url="https://b.example/1", source_id=b.id, status=UploadStatus.FAILED),
        ])
        s.commit()
        assert [(h.name, h.backlog) for h in source_health(s)] == [("a", 2), ("b", 0)]


def test_failure_hints() -> None:
    assert failure_hint(None) == "" and failure_hint("SomethingNew: x") == ""
    assert "robots.txt" in failure_hint("RobotsDisallowed: /api/ is disallowed")
    assert "allow_internal" in failure_hint("BlockedAddress: refusing to connect to x at non-public address 10.0.0.1")


def test_artwatch_status_prints_the_opt_in_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from config.settings import load_settings
    from storage.db import make_engine, make_sessionmaker, session_scope
    from workers.cli import cli

    monkeypatch.setenv("ARTWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ARTWATCH_CONFIG", raising=False)
    runner = CliRunner()
    init = runner.invoke(cli, ["init"], catch_exceptions=False)
    assert init.exit_code == 0, init.output
    settings = load_settings()
    db = make_engine(settings.resolved_database_url())
    with session_scope(make_sessionmaker(db)) as s:
        s.add(Source(name="intranet", kind="mastodon", url="http://10.0.0.5/",
                     last_error="BlockedAddress: refusing to connect to 10.0.0.5 at non-public address 10.0.0.5",
                     last_error_at=datetime.now(UTC)))
    db.dispose()
    out = runner.invoke(cli, ["status"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "last error: BlockedAddress" in out.output and "crawler.allow_internal" in out.output
