"""Review to sent in the browser's routes: the recipient picker, send (re-fetch, then SMTP to a
real aiosmtpd server), exports marked DRAFT before approval, mark sent, the host's reply, a
counter-notice; the match's status follows its notice, and each step shows in the case history."""

from __future__ import annotations

import email
import html
import threading
from datetime import date
from email.message import EmailMessage
from email.policy import default as default_policy

import httpx
from fastapi.testclient import TestClient
from review_kit import Inbox, Pages
from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, product_shot

from storage.models import AuditEvent, Match, MatchStatus, Notice, NoticeState, Role

ANSWERS = {
    "commentary_or_criticism": "no",
    "parody": "no",
    "small_portion": "no",
    "transformative": "no",
    "none_applies": "yes",
}


def _scene(world: World, url: str) -> tuple[int, int]:
    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    wid = world.work(owner, logo_png(1), "Acme poster", kind="artwork")
    shot, region = product_shot(logo_png(1))
    mid = world.match(wid, shot, url=url, region=region)
    return mid, world.draft(mid)


def _post(client: TestClient, path: str, **data: str) -> str:
    """POST a form from the notice page; returns the page the redirect leads to (post/redirect/get)."""
    nid = path.split("/")[2]
    token = csrf_from(client.get(f"/notices/{nid}").text)
    r = client.post(path, data={"csrf_token": token, **data})
    assert r.status_code == 303, r.text[:300]
    assert r.headers["location"].startswith(f"/notices/{nid}")
    return html.unescape(client.get(r.headers["location"]).text)


def _state(world: World, nid: int, mid: int) -> tuple[NoticeState, MatchStatus]:
    with world.sessions() as s:
        notice, match = s.get(Notice, nid), s.get(Match, mid)
        assert notice is not None and match is not None
        return notice.state, match.status


def test_unknown_host_recipient_picked_then_approved_sent_and_removed(
    send_world: World, inbox: tuple[Inbox, int], pages: Pages
) -> None:
    world, (box, _) = send_world, inbox
    mid, nid = _scene(world, pages.url("/p/1"))
    client = world.client("rita@example.com")
    page = html.unescape(client.get(f"/notices/{nid}").text)
    # The flag is explained where it is, with the picker beside it.
    assert "unknown host" in page and "not in the host directory" in page
    assert 'id="recipient-form"' in page
    assert '<option value="pics.example">Pics Example: dmca-agent@pics.example' in page
    refused = _post(client, f"/notices/{nid}/approve", **ANSWERS)
    assert "Still missing" in refused and "recipient (unknown host: choose the recipient)" in refused
    assert 'name="none_applies" value="yes" checked' in refused  # answers kept on refusal

    page = _post(client, f"/notices/{nid}/recipient", address="copyright@copier.example")
    assert "The notice will go to copyright@copier.example" in page and 'id="recipient-form"' not in page
    page = _post(client, f"/notices/{nid}/approve", **ANSWERS)
    assert "Approved." in page and 'id="send-form"' in page
    assert _state(world, nid, mid) == (NoticeState.APPROVED, MatchStatus.NOTICE_APPROVED)

    eml = client.get(f"/notices/{nid}/notice.eml")
    assert eml.status_code == 200 and 'filename="notice-' in eml.headers["content-disposition"]
    exported = email.message_from_bytes(eml.content, policy=default_policy)
    assert exported["To"] == "copyright@copier.example" and "DRAFT" not in str(exported["Subject"])
    assert b"DRAFT" not in client.get(f"/notices/{nid}/notice.pdf").content

    token = csrf_from(client.get(f"/notices/{nid}").text)
    sent = client.post(f"/notices/{nid}/send", data={"csrf_token": token})
    assert sent.status_code == 303
    landing = sent.headers["location"]
    assert "Sent." in client.get(landing).text
    client.get(landing)  # a refresh of the page after the POST is a GET: nothing is sent again
    assert len(box.messages) == 1
    rcpts, msg = box.messages[0]
    assert "copyright@copier.example" in rcpts and msg["X-Artwatch-Notice"] == str(nid)
    assert any(p.get_filename() == f"evidence-notice-{nid}.zip" for p in msg.iter_attachments())
    assert "/p/1" in pages.hits  # re-fetched before sending
    assert _state(world, nid, mid) == (NoticeState.SENT, MatchStatus.NOTICE_SENT)

    page = _post(client, f"/notices/{nid}/reply", reply="removed", note="took it down within a day")
    assert "Reply recorded." in page
    assert _state(world, nid, mid) == (NoticeState.RESOLVED, MatchStatus.REMOVED)
    # The case history, in words: who, what, which item.
    for line in (
        "artwatch (automatic) drafted the notice to a recipient still to be chosen",
        "rita@example.com chose the recipient copyright@copier.example",
        "rita@example.com approved the notice after answering the fair-use checklist",
        "rita@example.com exported the notice as an email file (.eml)",
        "rita@example.com sent the notice to copyright@copier.example by email",
        "rita@example.com recorded the host's reply: the host says it removed the content "
        "(took it down within a day)",
        "rita@example.com closed the case: the content was removed",
        "rita@example.com changed the match from notice sent to removed",
    ):
        assert line in " ".join(page.replace("</strong>", "").replace('<strong class="tl-who">', "").split()), line
    assert f"match #{mid} (notice #{nid})" in page
    match_page = html.unescape(world.client("ann@example.com").get(f"/matches/{mid}").text)
    flat = " ".join(match_page.replace("</strong>", "").replace('<strong class="tl-who">', "").split())
    assert "artwatch (automatic) found Acme poster at " + pages.url("/p/1") in flat
    assert "changed the match from new to notice approved" in flat and "closed the case" in flat
    with world.sessions() as s:
        steps = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.entity == "notice", AuditEvent.entity_id == nid)
            .order_by(AuditEvent.id)
        ).all()
    assert [a for a in steps if a not in ("item_added",)] == [
        "drafted", "recipient_confirmed", "edited", "submitted", "approved", "exported", "exported",
        "sent", "host_replied", "resolved",
    ]


def test_draft_exports_are_marked_and_a_draft_cannot_be_sent(
    send_world: World, inbox: tuple[Inbox, int], pages: Pages
) -> None:
    world, (box, _) = send_world, inbox
    mid, nid = _scene(world, "https://pics.example/p/9")  # a known host: its recipient is drafted
    client = world.client("rita@example.com")
    page = html.unescape(client.get(f"/notices/{nid}").text)
    assert "Not approved yet: exports are marked “DRAFT - NOT APPROVED, DO NOT SEND”" in page
    assert 'id="send-form"' not in page
    eml = client.get(f"/notices/{nid}/notice.eml")
    assert "-DRAFT.eml" in eml.headers["content-disposition"]
    msg = email.message_from_bytes(eml.content, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    assert str(msg["Subject"]).startswith("[DRAFT - NOT APPROVED, DO NOT SEND]")
    assert "dmca-agent@pics.example" not in str(msg["To"]) and msg["X-Artwatch-Draft"]
    text = msg.get_body(("plain",))
    assert text is not None and text.get_content().startswith("DRAFT - NOT APPROVED, DO NOT SEND")
    pdf = client.get(f"/notices/{nid}/notice.pdf")
    assert pdf.headers["content-type"] == "application/pdf" and b"DRAFT" in pdf.content
    page = _post(client, f"/notices/{nid}/send")
    assert "Not sent: notice" in page and "only an approved notice can be sent" in page
    assert box.messages == [] and pages.hits == []
    assert _state(world, nid, mid) == (NoticeState.DRAFT, MatchStatus.NEW)
    with world.sessions() as s:
        exports = s.scalars(select(AuditEvent).where(AuditEvent.action == "exported")).all()
        assert [(e.detail["format"], e.detail["draft"]) for e in exports] == [("eml", True), ("pdf", True)]


def test_mark_sent_by_hand_then_counter_notice(send_world: World, inbox: tuple[Inbox, int]) -> None:
    world, (box, _) = send_world, inbox
    mid, nid = _scene(world, "https://pics.example/p/2")
    client = world.client("rita@example.com")
    _post(client, f"/notices/{nid}/approve", **ANSWERS)
    page = _post(client, f"/notices/{nid}/mark-sent", via="web_form")
    assert "Recorded as sent." in page and 'id="reply-form"' in page and 'id="counter-form"' in page
    assert _state(world, nid, mid) == (NoticeState.SENT, MatchStatus.NOTICE_SENT)
    assert box.messages == []  # marked by hand: nothing was emailed
    page = _post(client, f"/notices/{nid}/counter", received="yesterday-ish")
    assert "Refused." in page and "give the date the counter-notice was received" in page
    page = _post(client, f"/notices/{nid}/reply", reply="no_answer")
    assert "no answer from the host yet" in page
    assert _state(world, nid, mid) == (NoticeState.SENT, MatchStatus.NOTICE_SENT)
    page = _post(client, f"/notices/{nid}/counter", received=date.today().isoformat())
    assert "Counter-notice recorded" in page and "the host may restore the material from" in page
    assert _state(world, nid, mid) == (NoticeState.RESOLVED, MatchStatus.COUNTER_NOTICED)
    page = _post(client, f"/notices/{nid}/reply", reply="refused")
    assert "Refused." in page and "can only be recorded for a sent notice" in page


def test_send_finds_the_content_gone_and_closes_the_case(
    send_world: World, inbox: tuple[Inbox, int], pages: Pages
) -> None:
    world, (box, _) = send_world, inbox
    mid, nid = _scene(world, pages.url("/p/gone"))
    client = world.client("rita@example.com")
    _post(client, f"/notices/{nid}/recipient", entry="pics.example")
    _post(client, f"/notices/{nid}/approve", **ANSWERS)
    pages.status["/p/gone"] = 404
    threads: list[str] = []

    def client_factory() -> httpx.Client:
        threads.append(threading.current_thread().name)
        return httpx.Client(timeout=10)

    world.app.state.ctx.notice_client = client_factory
    page = _post(client, f"/notices/{nid}/send")
    assert "the content is already gone" in page
    # the re-fetch (and the SMTP exchange after it) runs on the heavy-work threads, not the event loop's
    assert len(threads) == 1 and threads[0].startswith("artwatch-heavy")
    assert box.messages == []
    assert _state(world, nid, mid) == (NoticeState.RESOLVED, MatchStatus.REMOVED)


def test_owner_cannot_act_on_the_sending_steps(send_world: World) -> None:
    world = send_world
    mid, nid = _scene(world, "https://pics.example/p/3")
    owner = world.client("ann@example.com")
    token = csrf_from(owner.get(f"/notices/{nid}").text)
    for step, data in (
        ("recipient", {"address": "x@y.example"}),
        ("send", {}),
        ("mark-sent", {"via": "web_form"}),
        ("reply", {"reply": "removed"}),
        ("counter", {"received": "2026-01-01"}),
    ):
        r = owner.post(f"/notices/{nid}/{step}", data={"csrf_token": token, **data})
        assert r.status_code == 403, step
    assert _state(world, nid, mid) == (NoticeState.DRAFT, MatchStatus.NEW)
