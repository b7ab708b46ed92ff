"""Reviewing notices on the pages: evidence, approve with the fair-use checklist, edit, reject."""

from __future__ import annotations

import io
import json
import zipfile

from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, product_shot

from storage.models import AuditEvent, Match, MatchStatus, Notice, NoticeState, Role

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
    assert "71%" in html and "93%" in html and "Why it matched" in html  # signals formatted for people
    assert "https://pics.example/p/1" in html and "Captured" in html and "UTC" in html
    assert "dmca-agent@pics.example" in html and "penalty of perjury" in html
    for key in YES_NO_NONE:
        assert f'name="{key}" value="yes"' in html and f'name="{key}" value="no"' in html


def test_approve_needs_the_whole_checklist_and_records_who(world: World) -> None:
    _, mid, nid = _setup(world)
    client = world.client("rita@example.com")
    token = csrf_from(client.get(f"/notices/{nid}").text)
    refused = client.post(f"/notices/{nid}/approve", data={"csrf_token": token, "parody": "no"})
    # post/redirect/get: the refusal is a redirect to the notice page, which shows it
    assert refused.status_code == 303 and refused.headers["location"].startswith(f"/notices/{nid}?flash=")
    partial = client.get(refused.headers["location"])
    assert "Still missing" in partial.text and "answer yes or no to" in partial.text
    assert "“Is the use commentary or criticism of the work?”" in partial.text
    assert "commentary_or_criticism," not in partial.text  # the questions, not the form keys
    assert 'name="parody" value="no" checked' in partial.text  # the answer given is kept
    assert 'name="small_portion" value="no" checked' not in partial.text
    fair = client.get(
        client.post(
            f"/notices/{nid}/approve",
            data={"csrf_token": token, **YES_NO_NONE, "parody": "yes", "none_applies": "no"},
        ).headers["location"]
    )
    assert "may be fair" in fair.text
    assert 'name="parody" value="yes" checked' in fair.text
    assert 'name="transformative" value="no" checked' in fair.text
    with world.sessions() as s:
        assert s.get(Notice, nid).state == NoticeState.DRAFT  # type: ignore[union-attr]
    ok = client.post(f"/notices/{nid}/approve", data={"csrf_token": token, **YES_NO_NONE})
    assert ok.status_code == 303 and ok.headers["location"].startswith(f"/notices/{nid}?flash=")
    with world.sessions() as s:
        notice = s.get(Notice, nid)
        assert notice is not None and notice.state == NoticeState.APPROVED
        assert (
            notice.fair_use["reviewer"] == "rita@example.com"
            and notice.fair_use["none_applies"] is True
        )
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.entity == "notice", AuditEvent.entity_id == nid)
            .order_by(AuditEvent.id)
        ).all()
        assert actions[-2:] == ["submitted", "approved"]
        match = s.get(Match, mid)
        assert match is not None and match.status == MatchStatus.NOTICE_APPROVED  # follows its notice
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
    assert bad.status_code == 303
    assert "neither an email address" in client.get(bad.headers["location"]).text
    blank = client.post(f"/notices/{nid}/reject", data={"csrf_token": token, "reason": " "})
    assert blank.status_code == 303
    assert "give a reason for rejecting the notice" in client.get(blank.headers["location"]).text
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


def _set_page_url(world: World, match_id: int, page_url: str) -> None:
    from storage.db import session_scope
    from storage.models import Match, Upload

    with session_scope(world.sessions) as s:
        m = s.get(Match, match_id)
        assert m is not None
        upload = s.get(Upload, m.upload_id)
        assert upload is not None
        upload.page_url = page_url


def test_reviewer_sees_the_html_exactly_as_sent_in_a_sandboxed_frame(world: World) -> None:
    from notices.sanitise import disallowed_markup

    _, _, nid = _setup(world)
    with world.sessions() as s, s.begin():  # a body stored before sanitising existed
        notice = s.get(Notice, nid)
        assert notice is not None
        notice.body_html = notice.body_html.replace(
            "<body>", '<body><script>alert(1)</script><img src="https://t.test/o.gif"><p hidden>Pay 500 EUR</p>'
        )
    client = world.client("rita@example.com")
    page = client.get(f"/notices/{nid}").text
    assert f'<iframe class="notice-html" sandbox="" src="/notices/{nid}/body.html"' in page
    body = client.get(f"/notices/{nid}/body.html")
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/html")
    csp = body.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "frame-ancestors 'self'" in csp
    assert body.headers["x-frame-options"] == "SAMEORIGIN"
    assert disallowed_markup(body.text) == [] and "<script" not in body.text and "t.test" not in body.text
    assert "Pay 500 EUR" in body.text and "penalty of perjury" in body.text
    assert world.client("someone@else.test").get(f"/notices/{nid}/body.html").status_code in (303, 401, 403)


def test_owner_template_failure_is_shown_to_the_reviewer_with_its_reason(world: World) -> None:
    from notices.drafting import save_owner_template
    from notices.render import TEMPLATE_DIR
    from storage.db import session_scope

    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    loops = ("{% if items|length > 0 and works[0].title == 'Acme' %}{% for a in items * 3000 %}"
             "{% for b in items * 3000 %}x{% endfor %}{% endfor %}{% endif %}\n")
    with session_scope(world.sessions) as s:
        save_owner_template(s, owner, "dmca", "text", loops + (TEMPLATE_DIR / "dmca.txt.j2").read_text(),
                            "ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme", kind="artwork")
    shot, _ = product_shot(logo_png(1))
    nid = world.draft(world.match(wid, shot, url="https://pics.example/p/1"))
    page = world.client("rita@example.com").get(f"/notices/{nid}").text
    assert "owner_template_failed" in page
    assert "failed on this notice's facts and was not used" in page
    assert "line 1: over budget" in page and "steps" in page


def test_crawled_javascript_page_url_is_not_a_link_on_the_notice_page(world: World) -> None:
    _, mid, nid = _setup(world)
    _set_page_url(world, mid, "javascript:alert(document.domain)")
    page = world.client("rita@example.com").get(f"/notices/{nid}").text
    assert 'href="javascript:' not in page
    assert "javascript:alert(document.domain)" in page and "not a web address" in page
    match_page = world.client("rita@example.com").get(f"/matches/{mid}").text
    assert 'href="javascript:' not in match_page
