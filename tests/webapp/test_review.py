"""Reviewing notices on the pages: evidence, approve with the fair-use checklist, edit, reject."""

from __future__ import annotations

import io
import json
import zipfile

from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, product_shot

from storage.models import AuditEvent, Notice, NoticeState, Role

YES_NO_NONE = {
    "commentary_or_criticism": "no",
    "parody": "no",
    "small_portion": "no",
    "transformative": "no",
    "none_applies": "yes",
}


def _setup(world: World) -> tuple[int, int, int]:
    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    wid = world.work(owner, logo_png(1), "Acme", kind="artwork")
    shot, region = product_shot(logo_png(1))
    mid = world.match(
        wid,
        shot,
        url="https://pics.example/p/1",
        region=region,
        signals={"pdq": 0.71, "local": 0.93},
    )
    return wid, mid, world.draft(mid)


def test_notice_page_shows_evidence_side_by_side_with_signals_and_capture(world: World) -> None:
    wid, mid, nid = _setup(world)
    html = world.client("rita@example.com").get(f"/notices/{nid}").text
    assert f'src="/works/{wid}/image"' in html and f'href="/matches/{mid}/image"' in html
    assert '<polygon class="region" points="320.0,160.0' in html
    assert "0.710" in html and "0.930" in html
    assert "https://pics.example/p/1" in html and "Captured" in html and "UTC" in html
    assert "dmca-agent@pics.example" in html and "penalty of perjury" in html
    for key in YES_NO_NONE:
        assert f'name="{key}" value="yes"' in html and f'name="{key}" value="no"' in html


def test_approve_needs_the_whole_checklist_and_records_who(world: World) -> None:
    _, _, nid = _setup(world)
    client = world.client("rita@example.com")
    token = csrf_from(client.get(f"/notices/{nid}").text)
    partial = client.post(f"/notices/{nid}/approve", data={"csrf_token": token, "parody": "no"})
    assert partial.status_code == 409
    assert "Still missing" in partial.text and "answer yes or no to" in partial.text
    fair = client.post(
        f"/notices/{nid}/approve",
        data={"csrf_token": token, **YES_NO_NONE, "parody": "yes", "none_applies": "no"},
    )
    assert fair.status_code == 409 and "may be fair" in fair.text
    with world.sessions() as s:
        assert s.get(Notice, nid).state == NoticeState.DRAFT  # type: ignore[union-attr]
    ok = client.post(f"/notices/{nid}/approve", data={"csrf_token": token, **YES_NO_NONE})
    assert ok.status_code == 303 and ok.headers["location"] == f"/notices/{nid}"
    with world.sessions() as s:
        notice = s.get(Notice, nid)
        assert notice is not None and notice.state == NoticeState.APPROVED
        assert (
            notice.fair_use["reviewer"] == "rita@example.com"
            and notice.fair_use["none_applies"] is True
        )
        actions = s.scalars(
            select(AuditEvent.action).where(AuditEvent.entity_id == nid).order_by(AuditEvent.id)
        ).all()
        assert actions[-2:] == ["submitted", "approved"]
    page = client.get(f"/notices/{nid}").text
    assert (
        "approved" in page and "Approve notice" not in page
    )  # no more actions on an approved notice


def test_edit_keeps_a_diff_and_reject_needs_a_reason(world: World) -> None:
    _, _, nid = _setup(world)
    client = world.client("rita@example.com")
    token = csrf_from(client.get(f"/notices/{nid}").text)
    with world.sessions() as s:
        body = s.get(Notice, nid).body_text  # type: ignore[union-attr]
    r = client.post(
        f"/notices/{nid}/edit",
        data={
            "csrf_token": token,
            "body_text": body + "\nKind regards.\n",
            "subject": "",
            "recipient": "",
        },
    )
    assert r.status_code == 303
    with world.sessions() as s:
        event = s.scalars(
            select(AuditEvent).where(AuditEvent.entity_id == nid, AuditEvent.action == "edited")
        ).one()
        assert (
            "+Kind regards." in event.detail["diff"]["body_text"]
            and event.actor == "rita@example.com"
        )
    bad = client.post(
        f"/notices/{nid}/edit", data={"csrf_token": token, "recipient": "not an address"}
    )
    assert bad.status_code == 409 and "neither an email address" in bad.text
    assert (
        client.post(f"/notices/{nid}/reject", data={"csrf_token": token, "reason": " "}).status_code
        == 422
    )
    r = client.post(
        f"/notices/{nid}/reject", data={"csrf_token": token, "reason": "licensed reseller"}
    )
    assert r.status_code == 303
    with world.sessions() as s:
        notice = s.get(Notice, nid)
        assert notice is not None and notice.state == NoticeState.REJECTED
        assert notice.reject_reason == "licensed reseller"


def test_owner_reads_own_notice_but_cannot_act(world: World) -> None:
    _, _, nid = _setup(world)
    owner = world.client("ann@example.com")
    page = owner.get(f"/notices/{nid}")
    assert page.status_code == 200 and "Approve notice" not in page.text
    token = csrf_from(page.text)
    assert (
        owner.post(f"/notices/{nid}/approve", data={"csrf_token": token, **YES_NO_NONE}).status_code
        == 403
    )


def test_evidence_bundle_downloads_as_zip(world: World) -> None:
    _, _, nid = _setup(world)
    r = world.client("rita@example.com").get(f"/notices/{nid}/evidence.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert f"notice-{nid}-evidence.zip" in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        assert any(n.endswith("overlay.png") for n in names)
        manifest = [n for n in names if n.endswith(".json")]
        assert manifest and json.loads(z.read(manifest[0]))


def test_a_notice_with_a_logo_shows_its_trademark_part(world: World) -> None:
    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    art = world.work(owner, logo_png(1), "Heron", kind="artwork")
    logo = world.work(owner, logo_png(2), "Acme", kind="logo")
    nid = world.draft(world.match(art, logo_png(1), url="https://pics.example/p/1"))
    assert world.draft(world.match(logo, logo_png(2), url="https://pics.example/p/2")) == nid
    other = world.draft(world.match(art, logo_png(1), url="https://other.example/p/3"))
    client = world.client("rita@example.com")
    page = client.get(f"/notices/{nid}").text
    assert "<th>Law</th><td>dmca + trademark</td>" in page
    assert "=== Part 2 of 2: Trademark infringement complaint ===" in page
    queue = client.get("/review").text
    assert f'href="/notices/{nid}"' in queue and f'href="/notices/{other}"' in queue
    assert queue.count("<td>dmca + trademark</td>") == 1 and "<td>dmca</td>" in queue
