"""``artwatch notices ...`` as a user runs it: a subprocess against real SMTP and HTTP servers on 127.0.0.1.

Every expected failure (SMTP down or refusing, the re-fetch blocked by the
internal-address guard or failing, an unknown reviewer) is one ``error:``
line and exit status 2. A URL the fetcher now refuses is recorded on the
notice for the reviewer, and the follow-up pass (the CLI and the beat task)
goes on with the other notices. A healthy PDF export prints nothing on stderr.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import NoticeSettings, Settings, load_settings
from notices import workflow
from notices.drafting import draft_for_match
from storage.blobs import FolderBlobStore
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Account, AuditEvent, NoticeState, Role
from tests.cli_process import artwatch, assert_clear_error, assert_quiet

from . import factory as f
from .conftest import SmtpServer, WebServer

OK = {"commentary_or_criticism": "no", "parody": "no", "small_portion": "no", "transformative": "no",
      "none_applies": "yes"}
FAIR = [arg for key, answer in OK.items() for arg in ("--fair-use", f"{key}={answer}")]
REVIEWER = "rev@artwatch.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    settings: Settings
    sessions: sessionmaker[Session]
    blobs: FolderBlobStore
    web: WebServer
    smtp: SmtpServer

    def notice(self, *paths: str, base: str | None = None, state: NoticeState = NoticeState.APPROVED) -> int:
        """A notice listing the artwork at each of ``paths`` under ``base`` (default: the web server)."""
        base = base or self.web.base
        for p in paths:
            self.web.routes[p] = (200, f.png((1, 2, 3)))
        with session_scope(self.sessions) as s:
            acc = s.scalar(select(Account).where(Account.email == "ada@artist.test")) or f.owner(s)
            w = f.work(s, acc, "Blue Heron", blobs=self.blobs)
            mids = [f.match(s, f.upload(s, base + p, base + "/post" + p, blobs=self.blobs), w).id for p in paths]
        with session_scope(self.sessions) as s:
            for mid in mids:
                n = draft_for_match(s, mid, NoticeSettings())
            assert n is not None
            workflow.edit(s, n.id, REVIEWER, recipient="agent@host.test")
            if state == NoticeState.IN_REVIEW:
                workflow.submit(s, n.id, REVIEWER)
            elif state in (NoticeState.APPROVED, NoticeState.SENT):
                workflow.approve(s, n.id, REVIEWER, OK)
            if state == NoticeState.SENT:  # sent a day ago, follow-up due now
                workflow.mark_sent(s, n.id, REVIEWER, via="smtp", followup_days=0,
                                   now=datetime.now(UTC) - timedelta(days=1))
            return n.id

    def state(self, notice_id: int) -> tuple[NoticeState, list[str], list[str]]:
        """(state, flags, each item's online status) of a notice."""
        with session_scope(self.sessions) as s:
            n = workflow.get_notice(s, notice_id)
            return n.state, list(n.flags), [i.online for i in n.items]

    def audit(self, notice_id: int) -> list[tuple[str, dict[str, object]]]:
        with session_scope(self.sessions) as s:
            return [(e.action, dict(e.detail)) for e in s.scalars(
                select(AuditEvent).where(AuditEvent.entity == "notice", AuditEvent.entity_id == notice_id)
                .order_by(AuditEvent.id))]


@pytest.fixture
def world(test_settings: Settings, web_server: WebServer, smtp_server: SmtpServer,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for key, value in (("NOTICES__SMTP_HOST", smtp_server.host), ("NOTICES__SMTP_PORT", str(smtp_server.port)),
                       ("NOTICES__FROM_ADDRESS", "notices@artwatch.test"), ("CRAWLER__OBEY_ROBOTS", "false"),
                       ("CRAWLER__REQUESTS_PER_SECOND", "0")):
        monkeypatch.setenv(f"ARTWATCH_{key}", value)
    proc = artwatch("init")
    assert proc.returncode == 0, proc.stderr
    engine = make_engine(test_settings.resolved_database_url())
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        s.add(Account(email=REVIEWER, role=Role.REVIEWER))
    yield World(load_settings(), sessions, FolderBlobStore(test_settings.blob_dir()), web_server, smtp_server)
    engine.dispose()


def test_send_with_the_smtp_server_down(world: World) -> None:
    nid = world.notice("/img/1.png")
    port = _free_port()
    proc = artwatch("notices", "send", str(nid), "--reviewer", REVIEWER,
                    env={"ARTWATCH_NOTICES__SMTP_PORT": str(port)})
    assert_clear_error(proc, f"cannot reach the SMTP server at 127.0.0.1:{port}")
    assert world.state(nid)[0] == NoticeState.APPROVED


def test_send_refused_by_the_smtp_server(world: World) -> None:
    nid = world.notice("/img/1.png")
    world.smtp.box.refuse.update({"agent@host.test", "ada@artist.test"})
    proc = artwatch("notices", "send", str(nid), "--reviewer", REVIEWER)
    assert_clear_error(proc, "refused every recipient", "agent@host.test")
    assert world.smtp.box.envelopes == [] and world.state(nid)[0] == NoticeState.APPROVED


@pytest.mark.parametrize("failure", ["http-500", "closed-port"])
def test_send_when_the_refetch_fails(world: World, failure: str) -> None:
    if failure == "http-500":
        nid = world.notice("/img/1.png")
        world.web.routes["/img/1.png"] = (500, b"oops")
        needle = "answered HTTP 500"
    else:
        nid = world.notice("/img/1.png", base=f"http://127.0.0.1:{_free_port()}")
        needle = "could not re-fetch"
    proc = artwatch("notices", "send", str(nid), "--reviewer", REVIEWER)
    assert_clear_error(proc, needle, "/img/1.png")
    assert world.state(nid)[0] == NoticeState.APPROVED and world.smtp.box.envelopes == []


def test_send_with_a_url_the_fetcher_now_refuses_records_why(world: World) -> None:
    nid = world.notice("/img/1.png")
    world.web.hits.clear()
    # 127.0.0.1 is no longer allowed: the URL's host now resolves to an internal address.
    blocked = {"ARTWATCH_CRAWLER__ALLOW_INTERNAL": "[]"}
    proc = artwatch("notices", "send", str(nid), "--reviewer", REVIEWER, env=blocked)
    assert_clear_error(proc, f"notice {nid} not sent", world.web.url("/img/1.png"), "non-public address")
    assert world.web.hits == [] and world.smtp.box.envelopes == []
    state, flags, online = world.state(nid)
    assert (state, flags, online) == (NoticeState.APPROVED, ["url_blocked"], ["blocked"])
    [detail] = [d for action, d in world.audit(nid) if action == "refetch_blocked"]
    assert detail["url"] == world.web.url("/img/1.png") and "non-public address" in str(detail["reason"])
    shown = artwatch("notices", "show", str(nid), env=blocked)
    assert shown.returncode == 0, shown.stderr
    assert "url_blocked" in shown.stdout and f"{world.web.url('/img/1.png')}  blocked" in shown.stdout
    assert "refetch_blocked (the fetcher refused" in shown.stdout
    # Once the address is allowed again the notice goes out and the flag is cleared.
    sent = artwatch("notices", "send", str(nid), "--reviewer", REVIEWER)
    assert sent.returncode == 0 and sent.stdout.strip() == f"notice {nid} sent", sent.stderr
    assert world.state(nid) == (NoticeState.SENT, [], ["online"])


@pytest.mark.parametrize("entry", ["cli", "beat-task"])
def test_followup_records_a_blocked_url_and_goes_on(world: World, monkeypatch: pytest.MonkeyPatch,
                                                   entry: str) -> None:
    blocked = world.notice("/img/b.png", state=NoticeState.SENT)
    # Reached as "localhost", which stays allowed by name; 127.0.0.1 does not.
    removed = world.notice("/img/r.png", base=world.web.base.replace("127.0.0.1", "localhost"),
                           state=NoticeState.SENT)
    del world.web.routes["/img/r.png"]
    allow = '["localhost"]'
    if entry == "cli":
        proc = artwatch("notices", "followup", env={"ARTWATCH_CRAWLER__ALLOW_INTERNAL": allow})
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f"notice {blocked}: check_blocked: the fetcher refused"), proc.stdout
        assert lines[1:] == [f"notice {removed}: removed"]
    else:
        from workers import tasks
        from workers.runtime import set_runtime_settings

        monkeypatch.setenv("ARTWATCH_CRAWLER__ALLOW_INTERNAL", allow)
        set_runtime_settings(load_settings())
        assert tasks.run_followups.apply().get() == 2
    assert world.state(blocked) == (NoticeState.SENT, ["url_blocked"], ["blocked"])
    assert world.state(removed)[0] == NoticeState.RESOLVED
    assert [a for a, _ in world.audit(blocked)].count("refetch_blocked") == 1


def test_approve_needs_a_reviewer_with_an_account(world: World) -> None:
    nid = world.notice("/img/1.png", state=NoticeState.IN_REVIEW)
    proc = artwatch("notices", "approve", str(nid), "--reviewer", "ghost@nowhere.example", *FAIR)
    assert_clear_error(proc, "ghost@nowhere.example", "no account")
    assert world.state(nid)[0] == NoticeState.IN_REVIEW
    assert all(e[0] != "approved" for e in world.audit(nid))
    proc = artwatch("notices", "approve", str(nid), "--reviewer", "Rev@Artwatch.test", *FAIR)
    assert proc.returncode == 0, proc.stderr
    assert world.state(nid)[0] == NoticeState.APPROVED


def test_pdf_export_is_quiet(world: World, tmp_path: Path) -> None:
    nid = world.notice("/img/1.png")
    out = tmp_path / "notice.pdf"
    proc = artwatch("notices", "export", str(nid), "--pdf", str(out))
    assert_quiet(proc)
    assert out.read_bytes().startswith(b"%PDF-")
