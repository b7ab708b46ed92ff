"""Evidence bundle, re-fetch, SMTP sending, exports, rate limit and follow-up.

Real parts: aiosmtpd and an HTTP server on 127.0.0.1, SQLite."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from config.settings import NoticeSettings
from notices import workflow
from notices.content import as_utc
from notices.drafting import draft_for_match, open_key_for
from notices.errors import (
    EvidenceError,
    IllegalTransition,
    ManualSubmission,
    RateLimited,
    RefetchFailed,
)
from notices.evidence import build_bundle
from notices.sending import check_online, export_eml, export_pdf, run_followups, send_notice
from storage.blobs import FolderBlobStore
from storage.db import session_scope
from storage.models import AuditEvent, NoticeItem, NoticeState, WorkKind

from . import factory as f
from .conftest import SmtpServer, WebServer


def _rgb(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """The pixel of an RGB image (Pillow's getpixel is typed for every mode)."""
    px = im.getpixel(xy)
    assert isinstance(px, tuple)
    return px


OK = {"commentary_or_criticism": "no", "parody": "no", "small_portion": "no", "transformative": "no",
      "none_applies": "yes"}
REVIEWER = "rev@artwatch.test"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def sessions(sqlite_sessions: Any) -> Any:
    """SQLite only here: the storage paths these tests touch run on PostgreSQL
    in test_drafting and test_workflow, and one database per test is slow."""
    return sqlite_sessions


@pytest.fixture
def blobs(tmp_path: Path) -> FolderBlobStore:
    return FolderBlobStore(tmp_path / "blobs")


@pytest.fixture
def client() -> Any:
    with httpx.Client(timeout=5, follow_redirects=True) as c:
        yield c


def _settings(smtp: SmtpServer, **kw: Any) -> NoticeSettings:
    return NoticeSettings(smtp_host=smtp.host, smtp_port=smtp.port, from_address="notices@artwatch.test", **kw)


def _approved_notice(sessions: Any, blobs: FolderBlobStore, web: WebServer, paths: list[str],
                     email_: str = "ada@artist.test", recipient: str = "agent@host.test",
                     logo_paths: tuple[str, ...] = ()) -> int:
    """An approved notice for the artwork at ``paths`` (and a logo at ``logo_paths``)."""
    for p in (*paths, *logo_paths):
        web.routes[p] = (200, f.png((1, 2, 3)))
    with session_scope(sessions) as s:
        acc = f.owner(s, email_)
        w = f.work(s, acc, "Blue Heron", blobs=blobs)
        mids = [f.match(s, f.upload(s, web.url(p), web.url("/post" + p), blobs=blobs), w).id for p in paths]
        if logo_paths:
            logo = f.work(s, acc, "Acme Bird Logo", WorkKind.LOGO, blobs=blobs)
            mids += [f.match(s, f.upload(s, web.url(p), web.url("/post" + p), blobs=blobs), logo).id
                     for p in logo_paths]
    with session_scope(sessions) as s:
        for mid in mids:
            n = draft_for_match(s, mid, NoticeSettings())
        assert n is not None and n.flags == ["unknown_host"]
        workflow.edit(s, n.id, REVIEWER, recipient=recipient)
        workflow.approve(s, n.id, REVIEWER, OK)
        return n.id


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_evidence_bundle_has_every_file_with_its_hash(sessions: Any, blobs: FolderBlobStore,
                                                       web_server: WebServer) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png", "/img/2.png"])
    with session_scope(sessions) as s:
        data = build_bundle(s, blobs, nid, now=T0)
    zf = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(zf.read("manifest.json"))
    names = set(zf.namelist()) - {"manifest.json"}
    assert names == set(manifest["files"])
    for name, meta in manifest["files"].items():
        assert hashlib.sha256(zf.read(name)).hexdigest() == meta["sha256"]
    assert manifest["notice"]["id"] == nid and manifest["generated_at"] == T0.isoformat()
    [work_file] = [n for n in names if n.startswith("works/")]
    item = manifest["items"][0]
    assert item["url"] == web_server.url("/img/1.png") and item["page_url"] == web_server.url("/post/img/1.png")
    assert item["captured_at"] == "2026-11-20T09:30:00+00:00"
    assert item["match"]["signals"] == {"pdq": 0.91, "local": 0.88, "clip": 0.95}
    assert manifest["files"][work_file]["sha256"] == item["work"]["sha256"]
    assert manifest["files"][item["files"]["upload"]]["sha256"] == item["upload_sha256"]
    overlay = Image.open(io.BytesIO(zf.read(item["files"]["overlay"]))).convert("RGB")
    assert overlay.size == (160, 120)
    assert overlay.getpixel((70, 10)) != overlay.getpixel((70, 50))  # outline on the region's top edge
    r, g, _ = _rgb(overlay, (70, 50))
    assert r > 200 and g < 60                                         # red tint inside the region
    assert overlay.getpixel((150, 110)) == (200, 40, 10)              # untouched outside


def test_evidence_manifest_lists_the_law_of_every_part(sessions: Any, blobs: FolderBlobStore,
                                                       web_server: WebServer) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"], logo_paths=("/img/logo.png",))
    with session_scope(sessions) as s:
        data = build_bundle(s, blobs, nid, now=T0)
    zf = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["notice"]["law"] == "dmca" and manifest["notice"]["laws"] == ["dmca", "trademark"]
    assert [i["work"]["kind"] for i in manifest["items"]] == ["artwork", "logo"]
    assert "=== Part 2 of 2: Trademark infringement complaint ===" in zf.read("notice.txt").decode()


def test_removed_logo_copy_leaves_a_one_part_notice_for_review(
        sessions: Any, blobs: FolderBlobStore, web_server: WebServer, smtp_server: SmtpServer,
        client: httpx.Client) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"], logo_paths=("/img/logo.png",))
    del web_server.routes["/img/logo.png"]
    with session_scope(sessions) as s:
        result = send_notice(s, blobs, nid, REVIEWER, _settings(smtp_server), client)
        assert result.outcome == "returned_to_review"
        n = workflow.get_notice(s, nid)
        assert n.state == NoticeState.IN_REVIEW and n.open_key == open_key_for(n.owner_id, "127.0.0.1")
        assert "=== Part" not in n.body_text and "Trademark" not in n.subject
        assert json.loads(zipfile.ZipFile(io.BytesIO(build_bundle(s, blobs, nid))).read("manifest.json"))[
            "notice"]["laws"] == ["dmca"]


def test_missing_blob_is_a_clear_error(sessions: Any, blobs: FolderBlobStore, web_server: WebServer) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"])
    with session_scope(sessions) as s:
        item = s.scalars(select(NoticeItem)).first()
        assert item is not None
        up_sha = item.match.upload.blob_sha256
    assert up_sha is not None
    blobs.delete(up_sha)
    with session_scope(sessions) as s, pytest.raises(EvidenceError, match="missing from the blob store"):
        build_bundle(s, blobs, nid)


def test_send_over_smtp_after_refetch(sessions: Any, blobs: FolderBlobStore, web_server: WebServer,
                                      smtp_server: SmtpServer, client: httpx.Client) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png", "/img/2.png"])
    web_server.hits.clear()
    with session_scope(sessions) as s:
        result = send_notice(s, blobs, nid, "sender@artwatch.test", _settings(smtp_server, followup_days=5),
                             client, now=T0)
        assert result.outcome == "sent"
    assert sorted(web_server.hits) == ["/img/1.png", "/img/2.png"]
    [env] = smtp_server.box.envelopes
    assert sorted(env.rcpt_tos) == ["ada@artist.test", "agent@host.test"]
    msg = _parse(env.original_content)  # type: ignore[arg-type]
    assert msg["To"] == "agent@host.test" and msg["Reply-To"] == "ada@artist.test"
    assert msg["Subject"] == "DMCA notice of copyright infringement: 2 items on 127.0.0.1"
    assert msg["X-Artwatch-Notice"] == str(nid)
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and "/s/ Ada Artist" in text.get_content()
    assert html is not None and web_server.url("/img/2.png") in html.get_content()
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == f"evidence-notice-{nid}.zip" and att.get_content_type() == "application/zip"
    assert "manifest.json" in zipfile.ZipFile(io.BytesIO(att.get_content())).namelist()
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, nid)
        assert n.state == NoticeState.SENT and n.sent_via == "smtp"
        assert as_utc(n.sent_at) == T0 and as_utc(n.followup_due_at) == T0 + timedelta(days=5)
        assert {i.online for i in n.items} == {"online"}


def test_partly_removed_content_returns_to_review_and_nothing_is_sent(
        sessions: Any, blobs: FolderBlobStore, web_server: WebServer, smtp_server: SmtpServer,
        client: httpx.Client) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png", "/img/2.png"])
    del web_server.routes["/img/2.png"]
    with session_scope(sessions) as s:
        result = send_notice(s, blobs, nid, REVIEWER, _settings(smtp_server), client)
        assert result.outcome == "returned_to_review" and result.removed == [web_server.url("/img/2.png")]
    assert smtp_server.box.envelopes == []
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, nid)
        assert n.state == NoticeState.IN_REVIEW
        assert web_server.url("/img/2.png") not in n.body_text and web_server.url("/img/1.png") in n.body_text
        workflow.approve(s, nid, REVIEWER, OK)
    with session_scope(sessions) as s:
        assert send_notice(s, blobs, nid, REVIEWER, _settings(smtp_server), client).outcome == "sent"
    msg = _parse(smtp_server.box.envelopes[0].original_content)  # type: ignore[arg-type]
    assert msg["Subject"].endswith("1 item on 127.0.0.1")


def test_all_removed_resolves_without_sending(sessions: Any, blobs: FolderBlobStore, web_server: WebServer,
                                              smtp_server: SmtpServer, client: httpx.Client) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"])
    web_server.routes["/img/1.png"] = (410, b"gone")
    with session_scope(sessions) as s:
        assert send_notice(s, blobs, nid, REVIEWER, _settings(smtp_server), client).outcome == "all_removed"
        n = workflow.get_notice(s, nid)
        assert (n.state, n.resolution) == (NoticeState.RESOLVED, "removed")
    assert smtp_server.box.envelopes == []


def test_unconfirmable_content_blocks_sending(sessions: Any, blobs: FolderBlobStore, web_server: WebServer,
                                              smtp_server: SmtpServer, client: httpx.Client) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"])
    web_server.routes["/img/1.png"] = (503, b"busy")
    with session_scope(sessions) as s, pytest.raises(RefetchFailed, match="answered HTTP 503"):
        send_notice(s, blobs, nid, REVIEWER, _settings(smtp_server), client)
    with session_scope(sessions) as s:
        assert workflow.get_notice(s, nid).state == NoticeState.APPROVED
    assert smtp_server.box.envelopes == []


def test_check_online_reads_placeholders_and_dead_servers(web_server: WebServer, client: httpx.Client) -> None:
    web_server.routes["/removed.png"] = (200, b"placeholder")
    web_server.routes["/img/taken-down.png"] = (302, b"/removed.png")
    web_server.routes["/img/moved.png"] = (301, b"/img/new-home.png")
    web_server.routes["/img/new-home.png"] = (200, b"image")
    assert check_online(client, web_server.url("/img/taken-down.png")) == "removed"
    assert check_online(client, web_server.url("/img/moved.png")) == "online"
    assert check_online(client, web_server.url("/nope.png")) == "removed"
    dead = httpx.Client(timeout=1)
    with pytest.raises(RefetchFailed, match="could not re-fetch"):
        check_online(dead, "http://127.0.0.1:9/x.png")
    dead.close()


def test_check_online_is_bounded_by_one_deadline_against_a_header_drip() -> None:
    import time

    from config.settings import CrawlerSettings
    from crawler.service import build_client
    from tests.crawler.servers import DripServer

    settings = CrawlerSettings(allow_internal=["127.0.0.1"], requests_per_second=0, obey_robots=False,
                               read_timeout=0.3)
    lines = [b"HTTP/1.1 200 OK\r\n"] + [f"X-Drip-{i}: x\r\n".encode() for i in range(40)]
    with DripServer(lines, 0.15) as server, build_client(settings) as c:
        t0 = time.monotonic()
        with pytest.raises(RefetchFailed, match="could not re-fetch"):
            check_online(c, server.url + "/img.png")
        assert time.monotonic() - t0 < 0.9 + 0.6  # the 0.9 s budget (three read timeouts) plus a margin


def test_sends_are_rate_limited_per_host(sessions: Any, blobs: FolderBlobStore, web_server: WebServer,
                                         smtp_server: SmtpServer, client: httpx.Client) -> None:
    a = _approved_notice(sessions, blobs, web_server, ["/img/a.png"], "a@artist.test")
    b = _approved_notice(sessions, blobs, web_server, ["/img/b.png"], "b@artist.test")
    settings = _settings(smtp_server, sends_per_host_per_hour=1)
    with session_scope(sessions) as s:
        send_notice(s, blobs, a, REVIEWER, settings, client, now=T0)
    with session_scope(sessions) as s, pytest.raises(RateLimited) as info:
        send_notice(s, blobs, b, REVIEWER, settings, client, now=T0 + timedelta(minutes=30))
    assert info.value.retry_at == T0 + timedelta(hours=1)
    assert "1 notices were already sent to 127.0.0.1 in the past hour" in str(info.value)
    with session_scope(sessions) as s:
        assert send_notice(s, blobs, b, REVIEWER, settings, client, now=T0 + timedelta(minutes=61)).outcome == "sent"
    assert len(smtp_server.box.envelopes) == 2


def test_web_form_recipient_needs_manual_submission(sessions: Any, blobs: FolderBlobStore,
                                                    web_server: WebServer, smtp_server: SmtpServer,
                                                    client: httpx.Client) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"], recipient="https://host.test/dmca-form")
    with session_scope(sessions) as s, pytest.raises(ManualSubmission, match="goes to a web form"):
        send_notice(s, blobs, nid, REVIEWER, _settings(smtp_server), client)
    with session_scope(sessions) as s:
        workflow.mark_sent(s, nid, REVIEWER, via="web_form", followup_days=7)
        with pytest.raises(IllegalTransition, match="only an approved notice can be sent"):
            send_notice(s, blobs, nid, REVIEWER, _settings(smtp_server), client)


def test_exports_eml_and_pdf(sessions: Any, blobs: FolderBlobStore, web_server: WebServer) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"])
    with session_scope(sessions) as s:
        eml = export_eml(s, blobs, nid, NoticeSettings(from_address="notices@artwatch.test"))
        pdf = export_pdf(s, nid)
    msg = _parse(eml)
    assert msg["To"] == "agent@host.test" and b"\r\n" in eml
    assert [a.get_filename() for a in msg.iter_attachments()] == [f"evidence-notice-{nid}.zip"]
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"/Type /Page" in pdf


def test_followup_marks_each_url_removed_or_still_online(sessions: Any, blobs: FolderBlobStore,
                                                         web_server: WebServer, smtp_server: SmtpServer,
                                                         client: httpx.Client) -> None:
    gone = _approved_notice(sessions, blobs, web_server, ["/img/g1.png", "/img/g2.png"], "g@artist.test")
    stays = _approved_notice(sessions, blobs, web_server, ["/img/s1.png", "/img/s2.png"], "s@artist.test")
    settings = _settings(smtp_server, followup_days=7)
    for nid in (gone, stays):
        with session_scope(sessions) as s:
            send_notice(s, blobs, nid, REVIEWER, settings, client, now=T0)
    for p in ("/img/g1.png", "/img/g2.png", "/img/s1.png"):
        web_server.routes[p] = (404, b"gone")
    with session_scope(sessions) as s:
        assert run_followups(s, client, settings, now=T0 + timedelta(days=6)) == []  # not due yet
    with session_scope(sessions) as s:
        results = run_followups(s, client, settings, now=T0 + timedelta(days=7, minutes=1))
        assert [(r.notice_id, r.outcome) for r in results] == [(gone, "removed"), (stays, "still_online")]
        assert results[1].still_online == [web_server.url("/img/s2.png")]
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, stays)
        assert (n.state, n.resolution) == (NoticeState.RESOLVED, "still_online")
        assert [(i.url.rsplit("/", 1)[1], i.online) for i in n.items] == [("s1.png", "removed"),
                                                                          ("s2.png", "online")]
        ev = s.scalars(select(AuditEvent).where(AuditEvent.entity_id == stays, AuditEvent.action == "resolved")).one()
        assert ev.actor == "artwatch-followup" and ev.detail["still_online"] == [web_server.url("/img/s2.png")]


def test_followup_retries_when_the_check_fails(sessions: Any, blobs: FolderBlobStore, web_server: WebServer,
                                               smtp_server: SmtpServer, client: httpx.Client) -> None:
    nid = _approved_notice(sessions, blobs, web_server, ["/img/1.png"])
    settings = _settings(smtp_server)
    with session_scope(sessions) as s:
        send_notice(s, blobs, nid, REVIEWER, settings, client, now=T0)
    web_server.routes["/img/1.png"] = (502, b"bad gateway")
    with session_scope(sessions) as s:
        [r] = run_followups(s, client, settings, now=T0 + timedelta(days=8))
        assert r.outcome == "check_failed" and "HTTP 502" in r.error
    with session_scope(sessions) as s:
        assert workflow.get_notice(s, nid).state == NoticeState.SENT


def test_overlay_without_a_usable_region_outlines_the_whole_image() -> None:
    from notices.evidence import overlay_png

    for region in (None, [[1, 2]], [["a", "b"], [1, 2], [3, 4]]):
        im = Image.open(io.BytesIO(overlay_png(f.png((0, 0, 255), (50, 40)), region))).convert("RGB")
        r, _, b = _rgb(im, (0, 20))
        assert r > 200 and b < 100  # red border on the left edge
        r, _, b = _rgb(im, (25, 20))
        assert b > 150              # the inside is only tinted
