"""The dashboard: an owner's own numbers, staff's overview with source and worker health,
"crawl now" queueing a real message, and the favicon."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from webapp_testkit import World, csrf_from, login, logo_png, make_settings, product_shot

from storage.db import session_scope
from storage.models import AuditEvent, Match, MatchStatus, NoticeItem, Role, Source
from webapp.dashboard import build_dashboard
from workers.app import configure
from workers.broker import queue_depths


def _stat(html: str, label: str) -> int:
    found = re.search(r'<span class="n">(\d+)</span> (?:<a [^>]*>)?' + label, html)
    assert found, f"no count for {label!r}"
    return int(found.group(1))


def _scene(world: World) -> tuple[int, int]:
    ann = world.account("ann@example.com")
    bob = world.account("bob@example.com")
    world.account("rev@example.com", Role.REVIEWER)
    a1 = world.work(ann, logo_png(1, "ANN"), "Ann one")
    a2 = world.work(ann, logo_png(2, "AN2"), "Ann two")
    b1 = world.work(bob, logo_png(3, "BOB"), "Bob one")
    shot, _ = product_shot(logo_png(1, "ANN"))
    m1 = world.match(a1, shot, url="https://pics.example/p/1")
    m2 = world.match(a2, shot, url="https://pics.example/p/2", age=timedelta(days=3))
    m3 = world.match(a1, shot, url="https://other.example/p/3", age=timedelta(days=3))
    world.match(b1, shot, url="https://bobsite.example/p/9")
    n = world.notice(ann, [m1, m2])
    with session_scope(world.sessions) as s:
        m = s.get(Match, m3)
        assert m is not None
        m.status = MatchStatus.DISMISSED
        for item in s.query(NoticeItem).filter(NoticeItem.notice_id == n):
            if item.match_id == m1:
                item.online, item.checked_at = "removed", datetime.now(UTC)
    return ann, bob


def test_owner_sees_own_numbers_and_staff_see_everything(world: World) -> None:
    ann, bob = _scene(world)
    with world.sessions() as s:
        mine = build_dashboard(s, ann)
        everyone = build_dashboard(s, None)
        bobs = build_dashboard(s, bob)
    assert mine.works == 2 and everyone.works == 3 and bobs.works == 1
    assert mine.matches_by_status == {status.value: 0 for status in MatchStatus} | {"new": 2, "dismissed": 1}
    assert everyone.matches_by_status["new"] == 3 and bobs.matches_by_status["new"] == 1
    assert mine.notices_by_state["draft"] == 1 and bobs.notices == 0
    assert mine.removals == 1 and bobs.removals == 0 and everyone.removals == 1
    assert everyone.uploads_checked == 4  # every analysed upload, whoever's work it matched
    assert len(mine.days) == 30 and mine.days[-1] == datetime.now(UTC).date()
    assert mine.matches_per_day[-1] == 1 and mine.matches_per_day[-4] == 2 and sum(mine.matches_per_day) == 3
    assert mine.removals_per_day[-1] == 1 and sum(mine.removals_per_day) == 1
    assert mine.matches_by_site == [("pics.example", 2), ("other.example", 1)]
    assert ("bobsite.example", 1) in everyone.matches_by_site

    bob_page = world.client("bob@example.com").get("/dashboard")
    assert bob_page.status_code == 200
    assert "pics.example" not in bob_page.text and "Ann one" not in bob_page.text
    assert "bobsite.example" in bob_page.text and _stat(bob_page.text, "works") == 1
    assert "Crawl now" not in bob_page.text and "Workers and queues" not in bob_page.text
    ann_page = world.client("ann@example.com").get("/dashboard").text
    assert _stat(ann_page, "works") == 2 and _stat(ann_page, "new matches") == 2 and _stat(ann_page, "removals") == 1
    assert ann_page.count('<svg class="chart') == 3 and "Matches per day: 3 in the last 30 days" in ann_page


def test_staff_overview_shows_failing_sources_with_the_reason_and_crawl_now_queues(world: World) -> None:
    _scene(world)
    with session_scope(world.sessions) as s:
        s.add(Source(name="intranet", kind="mastodon", url="http://10.0.0.5/",
                     last_error="BlockedAddress: refusing to connect to 10.0.0.5 at non-public address 10.0.0.5",
                     last_error_at=datetime.now(UTC)))
        s.add(Source(name="healthy", kind="mastodon", url="https://m.example/", last_success_at=datetime.now(UTC)))
    rev = world.client("rev@example.com")
    page = rev.get("/dashboard")
    assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
    assert "1 of 2 sources failed their last crawl" in page.text
    assert "intranet: BlockedAddress" in page.text and "crawler.allow_internal" in page.text
    assert "Workers and queues" in page.text and "No live workers" in page.text
    with world.sessions() as s:
        sid = s.query(Source).filter_by(name="intranet").one().id
    app = configure(world.settings)
    before = queue_depths(app, world.settings)["crawl"] or 0
    # No CSRF token: refused, nothing queued.
    assert rev.post(f"/admin/sources/{sid}/crawl").status_code == 403
    assert (queue_depths(app, world.settings)["crawl"] or 0) == before
    r = rev.post(f"/admin/sources/{sid}/crawl", data={"csrf_token": csrf_from(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/dashboard?queued={sid}#sources"
    assert queue_depths(app, world.settings)["crawl"] == before + 1
    assert "Crawl of intranet queued" in rev.get(r.headers["location"]).text
    with world.sessions() as s:
        event = s.query(AuditEvent).filter_by(action="crawl_now").one()
        assert event.actor == "rev@example.com" and event.entity_id == sid
    assert rev.post("/admin/sources/99999/crawl", data={"csrf_token": csrf_from(page.text)}).status_code == 404
    # An owner may not crawl.
    owner = world.client("ann@example.com")
    token = csrf_from(owner.get("/dashboard").text)
    assert owner.post(f"/admin/sources/{sid}/crawl", data={"csrf_token": token}).status_code == 403
    assert queue_depths(app, world.settings)["crawl"] == before + 1


def test_everyone_lands_on_the_dashboard_and_the_favicon_is_served(world: World) -> None:
    world.account("root@example.com", Role.ADMIN)
    admin = world.client("root@example.com")
    assert admin.get("/").headers["location"] == "/dashboard"
    page = admin.get("/dashboard").text
    assert '<link rel="icon" href="/static/favicon.svg"' in page and "<h1>Overview</h1>" in page
    icon = world.client().get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg")
    legacy = world.client().get("/favicon.ico")
    assert legacy.status_code == 301 and legacy.headers["location"] == "/static/favicon.svg"


def test_with_a_redis_broker_the_overview_reads_queue_lengths_and_crawl_now_sends_there(
    world: World, redis_server_url: str, tmp_path: Path
) -> None:
    import redis

    from webapp import create_app

    settings = make_settings(tmp_path / "redis-data", broker_url=redis_server_url)
    app = create_app(settings, sessions=world.sessions, blobs=world.blobs, engine=world.engine)
    world.account("rev@example.com", Role.REVIEWER)
    with session_scope(world.sessions) as s:
        src = Source(name="feed-on-redis", kind="mastodon", url="https://m.example/")
        s.add(src)
        s.flush()
        sid = src.id
    rev = TestClient(app, follow_redirects=False)
    login(rev, "rev@example.com")
    page = rev.get("/dashboard").text
    assert "(redis broker)" in page and "The broker did not answer" not in page
    assert re.search(r"<th scope=\"row\">crawl</th><td class=\"num\">\d+ queued", page), "no Redis queue length"
    r = rev.post(f"/admin/sources/{sid}/crawl", data={"csrf_token": csrf_from(page)})
    assert r.status_code == 303 and r.headers["location"] == f"/dashboard?queued={sid}#sources"
    client = redis.Redis.from_url(redis_server_url, decode_responses=True)
    try:
        ours = [raw for raw in client.lrange("crawl", 0, -1)
                if json.loads(raw)["headers"]["task"] == "artwatch.crawl_source"
                and json.loads(raw)["headers"]["argsrepr"] == f"[{sid}]"]
        assert len(ours) == 1, "the crawl message is not on the Redis crawl queue"
    finally:
        for raw in client.lrange("crawl", 0, -1):
            if json.loads(raw)["headers"].get("argsrepr") == f"[{sid}]":
                client.lrem("crawl", 1, str(raw))
        client.close()
        configure(world.settings)  # the Celery app is process-wide: back to the folder broker


def test_an_unreachable_broker_is_reported_not_fatal(world: World, tmp_path: Path) -> None:
    import socket

    from webapp import create_app

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path / "down-data", broker_url=f"redis://127.0.0.1:{port}/0")
    app = create_app(settings, sessions=world.sessions, blobs=world.blobs, engine=world.engine)
    world.account("rev@example.com", Role.REVIEWER)
    with session_scope(world.sessions) as s:
        src = Source(name="feed", kind="mastodon", url="https://m.example/")
        s.add(src)
        s.flush()
        sid = src.id
    rev = TestClient(app, follow_redirects=False)
    login(rev, "rev@example.com")
    try:
        page = rev.get("/dashboard")
        assert page.status_code == 200 and "No live workers" in page.text
        assert '<th scope="row">crawl</th><td class="num">? queued' in page.text
        r = rev.post(f"/admin/sources/{sid}/crawl", data={"csrf_token": csrf_from(page.text)})
        assert r.status_code == 503 and "Could not queue the crawl: feed:" in r.text
        with world.sessions() as s:
            assert s.query(AuditEvent).filter_by(action="crawl_now").count() == 0
    finally:
        configure(world.settings)


def test_days_are_utc_days_whatever_the_database_session_time_zone(world: World) -> None:
    from sqlalchemy import text

    ann = world.account("ann@example.com")
    work = world.work(ann, logo_png(5, "TZ"), "tz")
    shot, _ = product_shot(logo_png(5, "TZ"))
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    late_yesterday = today - timedelta(minutes=30)
    world.match(work, shot, url="https://pics.example/tz", age=datetime.now(UTC) - late_yesterday)
    with world.sessions() as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SET TIME ZONE 'Pacific/Kiritimati'"))  # UTC+14: yesterday 23:30 is "today" there
        board = build_dashboard(s, ann)
    assert board.matches_per_day[-2:] == [1, 0]
