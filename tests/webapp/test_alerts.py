"""Owner alerts over SMTP, against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_kit import Inbox, free_port
from sqlalchemy import select
from webapp_testkit import World, logo_png, make_settings, product_shot

from notices.alerts import digest_due_since, send_digests, send_instant_alert
from storage.models import Account, Match, MatchStatus
from webapp import create_app


@pytest.fixture
def smtp(inbox: tuple[Inbox, int]) -> tuple[Inbox, int]:
    """The real aiosmtpd server on 127.0.0.1 (``review_kit.inbox``), as these tests name it."""
    return inbox


@pytest.fixture
def mail_world(world: World, smtp: tuple[Inbox, int]) -> World:
    _, port = smtp
    world.settings = make_settings(
        world.settings.data_dir,
        notices={
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "from_address": "alerts@artwatch.test",
        },
        web={"base_url": "https://watch.example"},
    )
    world.app = create_app(
        world.settings, sessions=world.sessions, blobs=world.blobs, engine=world.engine
    )
    return world


def _html(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def _text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def _inline_images(msg: EmailMessage) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for part in msg.walk():
        if part.get_content_type() == "image/png" and part.get("Content-ID"):
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out[str(part["Content-ID"]).strip("<>")] = payload
    return out


def test_instant_alert_goes_to_the_owner_with_thumbnails_and_links(
    mail_world: World, smtp: tuple[Inbox, int]
) -> None:
    inbox, _ = smtp
    world = mail_world
    owner = world.account("ann@example.com", alert_mode="instant")
    wid = world.work(owner, logo_png(1), "Acme mark")
    shot, region = product_shot(logo_png(1))
    mid = world.match(wid, shot, url="https://pics.example/p/1?<b>x</b>", region=region, score=0.91)
    with world.sessions() as s:
        assert send_instant_alert(s, world.blobs, world.settings, mid) is True
    assert len(inbox.messages) == 1
    rcpt, msg = inbox.messages[0]
    assert rcpt == ["ann@example.com"] and msg["To"] == "ann@example.com"
    assert msg["From"] == "alerts@artwatch.test"
    assert "Acme mark" in msg["Subject"] and "pics.example" in msg["Subject"]
    html, text = _html(msg), _text(msg)
    assert (
        f"https://watch.example/matches/{mid}" in html
        and f"https://watch.example/matches/{mid}" in text
    )
    assert "91%" in text and "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    images = _inline_images(msg)
    assert len(images) == 2 and all(data.startswith(b"\x89PNG") for data in images.values())
    for cid in images:
        assert f"cid:{cid}" in html
    unsub = msg["List-Unsubscribe"].strip("<>")
    assert (
        unsub.startswith("https://watch.example/unsubscribe/") and unsub in html and unsub in text
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # Idempotent: the match is alerted once, however often the task runs.
    with world.sessions() as s:
        assert send_instant_alert(s, world.blobs, world.settings, mid) is False
        assert s.get(Match, mid).alerted_at is not None  # type: ignore[union-attr]
    assert len(inbox.messages) == 1

    # The unsubscribe link works without logging in (one-click POST as well as the page).
    path = unsub.removeprefix("https://watch.example")
    anon = TestClient(world.app, follow_redirects=False)
    page = anon.get(path)
    assert page.status_code == 200 and "ann@example.com" in page.text
    assert anon.post(path).status_code == 200
    with world.sessions() as s:
        assert s.get(Account, owner).alert_mode == "off"  # type: ignore[union-attr]
    tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    assert anon.post(tampered).status_code == 404


def test_instant_alerts_respect_the_owners_choice_and_licences(
    mail_world: World, smtp: tuple[Inbox, int]
) -> None:
    inbox, _ = smtp
    world = mail_world
    off = world.account("off@example.com", alert_mode="off")
    digest = world.account("digest@example.com", alert_mode="digest")
    instant = world.account("inst@example.com", alert_mode="instant")
    shot, _ = product_shot(logo_png(1))
    m_off = world.match(world.work(off, logo_png(1), "A"), shot, url="https://x.example/1")
    m_digest = world.match(world.work(digest, logo_png(2), "B"), shot, url="https://x.example/2")
    m_licensed = world.match(world.work(instant, logo_png(3), "C"), shot, url="https://x.example/3")
    with world.sessions() as s:
        s.get(Match, m_licensed).status = MatchStatus.SUPPRESSED  # type: ignore[union-attr]
        s.commit()
        for mid in (m_off, m_digest, m_licensed, 99999):
            assert send_instant_alert(s, world.blobs, world.settings, mid) is False
    assert inbox.messages == []


def test_digest_merges_matches_per_owner_and_is_idempotent(
    mail_world: World, smtp: tuple[Inbox, int]
) -> None:
    inbox, _ = smtp
    world = mail_world
    ann = world.account("ann@example.com", alert_mode="digest")
    bob = world.account("bob@example.com", alert_mode="digest")
    world.account("carl@example.com", alert_mode="digest")  # nothing new: no email
    w1 = world.work(ann, logo_png(1), "First")
    w2 = world.work(ann, logo_png(2, "TWO"), "Second")
    wb = world.work(bob, logo_png(3, "BOB"), "Bobs")
    shot, region = product_shot(logo_png(1))
    ann_matches = [
        world.match(w1, shot, url="https://a.example/1", region=region),
        world.match(w1, shot, url="https://b.example/2"),
        world.match(w2, shot, url="https://c.example/3"),
    ]
    bob_match = world.match(wb, shot, url="https://d.example/4")
    now = datetime.now(UTC) + timedelta(seconds=1)
    with world.sessions() as s:
        assert send_digests(s, world.blobs, world.settings, now) == 2
    by_rcpt = {rcpt[0]: msg for rcpt, msg in inbox.messages}
    assert set(by_rcpt) == {"ann@example.com", "bob@example.com"}
    ann_msg = by_rcpt["ann@example.com"]
    assert "3 new matches of 2 works" in ann_msg["Subject"]
    html = _html(ann_msg)
    for mid in ann_matches:
        assert f"https://watch.example/matches/{mid}" in html
    assert f'/matches/{bob_match}"' not in html and "Bobs" not in html
    assert len(_inline_images(ann_msg)) == 6
    assert ann_msg["List-Unsubscribe"]
    # Run again: everything was alerted, nothing is sent twice.
    with world.sessions() as s:
        assert send_digests(s, world.blobs, world.settings, now) == 0
        assert all(m.alerted_at is not None for m in s.scalars(select(Match)))
    assert len(inbox.messages) == 2
    # A later match waits for the next day's digest (beat calls this hourly), then goes alone.
    later = world.match(w2, shot, url="https://e.example/5")
    with world.sessions() as s:
        assert send_digests(s, world.blobs, world.settings, now + timedelta(seconds=5)) == 0
        tomorrow = digest_due_since(world.settings, now) + timedelta(days=1, minutes=1)
        assert send_digests(s, world.blobs, world.settings, tomorrow) == 1
        assert send_digests(s, world.blobs, world.settings, tomorrow + timedelta(hours=1)) == 0
    assert len(inbox.messages) == 3
    assert f"/matches/{later}" in _html(inbox.messages[-1][1])
    assert "1 new match of 1 work" in inbox.messages[-1][1]["Subject"]


def test_digest_goes_out_from_the_configured_hour(world: World) -> None:
    settings = make_settings(world.settings.data_dir, alerts={"digest_hour_utc": 8})
    at = datetime(2026, 3, 4, 7, 59, tzinfo=UTC)
    assert digest_due_since(settings, at) == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    assert digest_due_since(settings, at + timedelta(minutes=1)) == datetime(
        2026, 3, 4, 8, 0, tzinfo=UTC
    )


def test_a_failed_send_releases_the_claim_so_a_retry_sends(world: World) -> None:
    from notices.errors import MailError

    world.settings = make_settings(
        world.settings.data_dir, notices={"smtp_host": "127.0.0.1", "smtp_port": free_port()}
    )
    owner = world.account("ann@example.com", alert_mode="instant")
    shot, _ = product_shot(logo_png(1))
    mid = world.match(world.work(owner, logo_png(1), "A"), shot, url="https://x.example/1")
    with world.sessions() as s, pytest.raises(MailError, match="cannot reach the SMTP server"):
        send_instant_alert(s, world.blobs, world.settings, mid)
    with world.sessions() as s:
        assert s.get(Match, mid).alerted_at is None  # type: ignore[union-attr]


def test_crlf_in_a_crawled_url_or_title_does_not_forge_lines_in_the_alert(
    mail_world: World, smtp: tuple[Inbox, int]
) -> None:
    from storage.models import Upload

    inbox, _ = smtp
    world = mail_world
    owner = world.account("ann@example.com", alert_mode="instant")
    wid = world.work(owner, logo_png(1), "Acme\r\nEvidence: https://evil.test/phish")
    shot, _ = product_shot(logo_png(1))
    mid = world.match(wid, shot, url="https://pics.example/p/9")
    with world.sessions() as s, s.begin():
        m = s.get(Match, mid)
        assert m is not None
        upload = s.get(Upload, m.upload_id)
        assert upload is not None
        upload.page_url = "https://pics.example/p/9\r\n\r\nEvidence: https://evil.test/login"
    with world.sessions() as s:
        assert send_instant_alert(s, world.blobs, world.settings, mid) is True
    _, msg = inbox.messages[0]
    text = _text(msg)
    lines = text.splitlines()
    assert not any(line.startswith("Evidence: https://evil.test") for line in lines), text
    assert any("https://pics.example/p/9 Evidence: https://evil.test/login" in line for line in lines)
    assert "\r" not in _html(msg).replace("\r\n", "\n")
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])


def test_svg_thumbnails_in_an_alert_read_no_file_from_the_server(
    mail_world: World, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    """Issue 16: an SVG whose <image> named a local PNG put that file into the owner's email."""
    import io

    import numpy as np
    from PIL import Image

    from tests.hostile import file_image_svg

    inbox, _ = smtp
    world = mail_world
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (0, 255, 0)).save(secret)
    owner = world.account("ann@example.com", alert_mode="instant")
    wid = world.work(owner, file_image_svg(secret), "Sneaky mark")
    mid = world.match(wid, file_image_svg(secret), url="https://pics.example/p/svg")
    with world.sessions() as s:
        assert send_instant_alert(s, world.blobs, world.settings, mid) is True
    images = _inline_images(inbox.messages[0][1])
    assert len(images) == 2  # both thumbnails rendered, from the SVG's own content only
    for data in images.values():
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
        green = (rgb[:, :, 1] > 200) & (rgb[:, :, 0] < 80) & (rgb[:, :, 2] < 80)
        assert not green.any(), "the server's local PNG is in the alert email"
