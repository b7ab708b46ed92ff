"""`artwatch notices ...` through click's runner, on SQLite with real SMTP and HTTP servers."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from config.settings import CrawlerSettings, NoticeSettings, Settings
from notices.cli import notices_group
from notices.drafting import draft_for_match
from storage.blobs import FolderBlobStore
from storage.db import session_scope
from storage.models import Account, NoticeState, Role

from . import factory as f
from .conftest import SmtpServer, WebServer

FAIR = ["--fair-use", "commentary_or_criticism=no", "--fair-use", "parody=no", "--fair-use", "small_portion=no",
        "--fair-use", "transformative=no", "--fair-use", "none_applies=yes"]


@pytest.fixture
def env(sqlite_sessions: Any, tmp_path: Path, smtp_server: SmtpServer, web_server: WebServer) -> SimpleNamespace:
    settings = Settings(
        data_dir=tmp_path / "data",
        crawler=CrawlerSettings(allow_internal=["127.0.0.1"], obey_robots=False, requests_per_second=1000),
        notices=NoticeSettings(smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                               from_address="notices@artwatch.test"),
    )
    blobs = FolderBlobStore(tmp_path / "blobs")
    obj = SimpleNamespace(settings=settings, sessions=sqlite_sessions, blobs=blobs)
    web_server.routes["/img/1.png"] = (200, f.png((1, 2, 3)))
    with session_scope(sqlite_sessions) as s:
        s.add_all([Account(email=e, role=Role.REVIEWER) for e in ("rev@artwatch.test", "rev@a.test", "r@a.test")])
        acc = f.owner(s)
        w = f.work(s, acc, "Blue Heron", blobs=blobs)
        mid = f.match(s, f.upload(s, web_server.url("/img/1.png"), web_server.url("/post/1"), blobs=blobs), w).id
    with session_scope(sqlite_sessions) as s:
        n = draft_for_match(s, mid, settings)
        assert n is not None
        nid = n.id
    return SimpleNamespace(obj=obj, nid=nid, smtp=smtp_server, web=web_server, tmp=tmp_path)


def run(env: SimpleNamespace, *args: str, input: str | None = None) -> Any:
    result = CliRunner().invoke(notices_group, list(args), obj=env.obj, input=input, catch_exceptions=False)
    return result


def test_list_show_approve_send(env: SimpleNamespace) -> None:
    out = run(env, "list")
    assert out.exit_code == 0 and f"{env.nid:>5}  draft" in out.output and "[unknown_host]" in out.output
    out = run(env, "show", str(env.nid))
    assert "recipient: (none" in out.output and "recipient (unknown host: choose the recipient)" in out.output
    assert "/s/ Ada Artist" in out.output and "drafted" in out.output
    out = run(env, "approve", str(env.nid), "--reviewer", "rev@artwatch.test", *FAIR)
    assert out.exit_code == 2 and "missing:" in out.output and "Traceback" not in out.output
    assert "  - recipient (unknown host: choose the recipient)" in out.output
    assert run(env, "edit", str(env.nid), "--recipient", "agent@host.test", "--reviewer", "rev@a.test").exit_code == 0
    out = run(env, "approve", str(env.nid), "--reviewer", "rev@artwatch.test", *FAIR)
    assert out.exit_code == 0, out.output
    out = run(env, "send", str(env.nid), "--reviewer", "rev@artwatch.test")
    assert out.output.strip() == f"notice {env.nid} sent"
    assert len(env.smtp.box.envelopes) == 1
    assert run(env, "list", "--state", "sent").output.count("sent") >= 1
    out = run(env, "show", str(env.nid))
    assert "submitted" in out.output and "approved" in out.output and "rev@artwatch.test" in out.output


def test_approve_prompts_for_missing_answers(env: SimpleNamespace) -> None:
    run(env, "edit", str(env.nid), "--recipient", "agent@host.test")
    out = run(env, "approve", str(env.nid), "--interactive", "--fair-use", "parody=no",
              input="rev@artwatch.test\nno\nno\nno\nyes\n")
    assert out.exit_code == 0, out.output
    assert "Is the use commentary or criticism" in out.output and "Is the use a parody" not in out.output
    assert f"notice {env.nid} approved by rev@artwatch.test" in out.output


def test_approve_without_answers_lists_them(env: SimpleNamespace) -> None:
    out = run(env, "approve", str(env.nid), "--reviewer", "r@a.test", "--no-interactive")
    assert out.exit_code == 2
    assert "answer yes or no to “Is the use commentary or criticism of the work?”, “Is the use a parody" in out.output
    out = run(env, "approve", str(env.nid), "--fair-use", "parody", "--no-interactive")
    assert out.exit_code == 2 and "expected key=yes or key=no" in out.output


def test_reject_edit_and_unknown_ids(env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    body = env.tmp / "body.txt"
    with session_scope(env.obj.sessions) as s:
        from notices.workflow import get_notice
        body.write_text(get_notice(s, env.nid).body_text.replace("Please remove", "Kindly remove"))
    out = run(env, "edit", str(env.nid), "--body-file", str(body))
    assert out.exit_code == 0 and f"notice {env.nid} updated" in out.output
    monkeypatch.setenv("EDITOR", "sed -i s/Kindly/Promptly/")
    out = run(env, "edit", str(env.nid))
    assert out.exit_code == 0, out.output
    with session_scope(env.obj.sessions) as s:
        assert "Promptly remove" in get_notice(s, env.nid).body_text
    out = run(env, "reject", str(env.nid), "--reason", "licensed")
    assert out.exit_code == 0
    out = run(env, "reject", str(env.nid), "--reason", "again")
    assert out.exit_code == 2 and "is rejected; rejected needs it to be" in out.output
    out = run(env, "show", "999")
    assert out.exit_code == 2 and out.output.strip() == "error: no notice with id 999"


def test_export_followup_and_counter(env: SimpleNamespace) -> None:
    run(env, "edit", str(env.nid), "--recipient", "https://host.test/form")
    draft = env.tmp / "draft.eml"
    assert run(env, "export", str(env.nid), "--eml", str(draft)).exit_code == 0
    assert b"Subject: [DRAFT - NOT APPROVED, DO NOT SEND] DMCA notice" in draft.read_bytes()
    assert run(env, "approve", str(env.nid), "--reviewer", "r@a.test", *FAIR).exit_code == 0
    out = run(env, "send", str(env.nid))
    assert out.exit_code == 2 and "goes to a web form" in out.output
    eml, pdf, bundle = env.tmp / "n.eml", env.tmp / "n.pdf", env.tmp / "n.zip"
    out = run(env, "export", str(env.nid), "--eml", str(eml), "--pdf", str(pdf), "--bundle", str(bundle))
    assert out.exit_code == 0, out.output
    assert b"Subject: DMCA notice" in eml.read_bytes() and pdf.read_bytes().startswith(b"%PDF")
    assert json.loads(zipfile.ZipFile(io.BytesIO(bundle.read_bytes())).read("manifest.json"))["notice"]["id"] == env.nid
    assert run(env, "export", str(env.nid)).exit_code == 2
    with session_scope(env.obj.sessions) as s:
        from sqlalchemy import select

        from storage.models import AuditEvent
        exports = s.scalars(select(AuditEvent).where(AuditEvent.action == "exported").order_by(AuditEvent.id)).all()
        assert [(e.detail["format"], e.detail["draft"]) for e in exports] == [
            ("eml", True), ("eml", False), ("pdf", False), ("bundle", False)]
    assert run(env, "mark-sent", str(env.nid)).exit_code == 0
    out = run(env, "reply", str(env.nid), "no_answer", "--note", "chased")
    assert out.exit_code == 0 and out.output.strip() == f"notice {env.nid}: reply recorded; sent"
    assert run(env, "followup").output.strip() == "no follow-ups due"
    with session_scope(env.obj.sessions) as s:
        from notices.workflow import get_notice
        n = get_notice(s, env.nid)
        assert n.followup_due_at is not None
        n.followup_due_at = n.followup_due_at.replace(year=2000)
    env.web.routes.pop("/img/1.png")
    out = run(env, "followup")
    assert out.output.strip() == f"notice {env.nid}: removed"
    out = run(env, "counter", str(env.nid), "--date", "2099-11-19")
    assert out.exit_code == 0
    assert "may restore the material from 2099-12-04 and must by 2099-12-10" in out.output
    with session_scope(env.obj.sessions) as s:
        assert get_notice(s, env.nid).state == NoticeState.RESOLVED


def test_redraft_after_the_owner_completes_the_profile(env: SimpleNamespace) -> None:
    with session_scope(env.obj.sessions) as s:
        late = f.owner(s, "late@artist.test", complete=False)
        w = f.work(s, late, "Late Work")
        f.match(s, f.upload(s, "https://i.imgur.com/late.png"), w)
        f.match(s, f.upload(s, "https://i.imgur.com/late2.png"), w)
    out = run(env, "redraft")
    assert out.exit_code == 0
    assert "0 notice(s) drafted" in out.output
    assert "still blocked: cannot draft notices for late@artist.test: fill in legal name" in out.output
    with session_scope(env.obj.sessions) as s:
        acc = s.query(Account).filter_by(email="late@artist.test").one()
        acc.legal_name, acc.postal_address, acc.phone = "Late Artist", "1 Road\nTown", "+1 555 0199"
    out = run(env, "redraft", "--owner", "late@artist.test")
    assert out.exit_code == 0 and "1 notice(s) drafted or extended" in out.output
    assert "still blocked" not in out.output
    assert "0 notice(s)" in run(env, "redraft").output  # nothing left: idempotent
