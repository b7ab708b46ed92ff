"""Pages: logging in, CSRF, throttling, registering works, evidence, import progress, admin."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from webapp_testkit import PASSWORD, World, csrf_from, login, logo_png, make_settings, product_shot

from storage.models import Account, Role, Source, WebJob, Work


def test_login_sets_session_and_wrong_password_is_refused(world: World) -> None:
    world.account("ann@example.com")
    client = world.client()
    bad = login(client, "ann@example.com", "wrong password")
    assert bad.status_code == 400 and "Wrong email or password" in bad.text
    ok = login(client, "ann@example.com")
    assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
    cookie = ok.headers["set-cookie"]
    assert "aw_session=" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert client.get("/works").status_code == 200


def test_pages_need_login(world: World) -> None:
    r = world.client().get("/works/new")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/works/new"


def test_forms_without_a_valid_csrf_token_are_refused(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    r = client.post("/profile", data={"alert_mode": "off"})
    assert r.status_code == 403 and "security token" in r.text
    r = client.post("/profile", data={"alert_mode": "off", "csrf_token": "forged"})
    assert r.status_code == 403
    # A token rendered for another browser's session does not work here either.
    world.account("bob@example.com")
    other = world.client("bob@example.com")
    foreign = csrf_from(other.get("/profile").text)
    assert (
        client.post("/profile", data={"alert_mode": "off", "csrf_token": foreign}).status_code
        == 403
    )
    with world.sessions() as s:
        assert (
            s.scalar(select(Account.alert_mode).where(Account.email == "ann@example.com"))
            == "instant"
        )


def test_logout_ends_the_server_side_session(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    cookie = client.cookies.get("aw_session")
    token = csrf_from(client.get("/works").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    replay = world.client()
    replay.cookies.set("aw_session", cookie or "")
    assert replay.get("/works").status_code == 303  # the stolen cookie is dead


def test_owner_registers_a_logo_and_sees_it_listed(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/works/new").text)
    r = client.post(
        "/works",
        data={
            "csrf_token": token,
            "title": "Acme mark",
            "kind": "logo",
            "registration_number": "TM 123",
            "licensed_sites": "shop.example\n@acme",
        },
        files={"file": ("acme.png", logo_png(1), "image/png")},
    )
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"])
    assert "Acme mark" in page.text and "TM 123" in page.text and "shop.example" in page.text
    listing = client.get("/works").text
    assert "Acme mark" in listing
    with world.sessions() as s:
        work = s.scalars(select(Work)).one()
        assert work.licensed_sites == ["shop.example", "@acme"] and work.kind.value == "logo"
    # The engine knows the work: its own image is found again.
    _shot, _ = product_shot(logo_png(1))
    assert any(
        c.work_id == work.id
        for c in world.engine.analyse(logo_png(1), name="x", owner_ids=[work.owner_id])
    )


def test_register_refuses_unsupported_and_broken_files_with_a_clear_message(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/works/new").text)
    gif = b"GIF89a" + b"\x00" * 100
    r = client.post(
        "/works",
        data={"csrf_token": token, "title": "x", "kind": "logo"},
        files={"file": ("x.gif", gif, "image/gif")},
    )
    assert r.status_code == 415 and "upload a PNG, JPEG, WebP or SVG" in r.text
    broken = logo_png(1)[:200]
    r = client.post(
        "/works",
        data={"csrf_token": token, "title": "x", "kind": "logo"},
        files={"file": ("broken.png", broken, "image/png")},
    )
    assert r.status_code == 415 and "broken.png" in r.text
    with world.sessions() as s:
        assert s.scalars(select(Work)).all() == []


def test_works_list_counts_flagged_matches(world: World) -> None:
    owner = world.account("ann@example.com")
    w1 = world.work(owner, logo_png(1), "First")
    world.work(owner, logo_png(2, "ZED"), "Second")
    shot, region = product_shot(logo_png(1))
    world.match(w1, shot, url="https://pics.example/p/1", region=region)
    world.match(w1, shot, url="https://pics.example/p/2", region=region)
    html = world.client("ann@example.com").get("/works").text
    rows = re.findall(
        r'<a href="/works/(\d+)">([^<]+)</a></td>.*?<td class="num">(.*?)</td>', html, re.DOTALL
    )
    counts = {title: re.sub(r"<[^>]+>", "", n) for _, title, n in rows}
    assert counts == {"First": "2", "Second": "0"}


def test_match_page_shows_both_images_and_marks_the_region(world: World) -> None:
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme")
    shot, region = product_shot(logo_png(1))
    mid = world.match(
        wid,
        shot,
        url="https://pics.example/p/1",
        region=region,
        signals={"pdq": 0.812, "local": 0.954},
    )
    client = world.client("ann@example.com")
    html = client.get(f"/matches/{mid}").text
    assert f'src="/works/{wid}/image"' in html
    assert f'href="/matches/{mid}/image"' in html and 'viewBox="0 0 640 480"' in html
    assert 'points="320.0,160.0 576.0,160.0 576.0,416.0 320.0,416.0"' in html
    # Signals are shown for people (percentages), under a plain-language line from the geometry.
    assert "81%" in html and "95%" in html and "0.812" not in html and "https://pics.example/p/1" in html
    assert "The logo appears about 21% of the upload." in html
    img = client.get(f"/matches/{mid}/image")
    assert (
        img.status_code == 200
        and img.headers["content-type"] == "image/jpeg"
        and img.content == shot
    )
    assert "sandbox" in img.headers["content-security-policy"]


def test_crawled_strings_are_escaped(world: World) -> None:
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme")
    shot, _ = product_shot(logo_png(1))
    mid = world.match(wid, shot, url='https://pics.example/p/"><script>alert(1)</script>')
    html = world.client("ann@example.com").get(f"/matches/{mid}").text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_svg_images_are_served_sandboxed(world: World) -> None:
    owner = world.account("ann@example.com")
    svg = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200">'
        b'<rect width="200" height="200" fill="#fff"/>'
        b'<circle cx="100" cy="100" r="70" fill="#c00"/>'
        b'<rect x="60" y="60" width="80" height="80" fill="#004"/></svg>'
    )
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/works/new").text)
    r = client.post(
        "/works",
        data={"csrf_token": token, "title": "Badge", "kind": "logo"},
        files={"file": ("badge.svg", svg, "image/svg+xml")},
    )
    assert r.status_code == 303, r.text
    with world.sessions() as s:
        wid = s.scalars(select(Work.id).where(Work.owner_id == owner)).one()
    img = client.get(f"/works/{wid}/image")
    assert img.headers["content-type"] == "image/svg+xml"
    assert "sandbox" in img.headers["content-security-policy"]


def test_import_shows_progress_until_done_and_reports_bad_files(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/works/import").text)
    # Touch the polled routes once before the import thread starts: FastAPI sets a route up on
    # its first request inside warnings.catch_warnings(), which races with the decoder's own
    # catch_warnings() in the import thread under pytest's "error" filter.
    assert (
        client.get("/jobs/0/progress").status_code == 404
        and client.get("/jobs/0").status_code == 404
    )
    files = [("files", (f"logo{i}.png", logo_png(10 + i, f"L{i}"), "image/png")) for i in range(2)]
    files.append(("files", ("notes.txt", b"hello", "text/plain")))
    r = client.post("/works/import", data={"csrf_token": token, "kind": "logo"}, files=files)
    assert r.status_code == 303
    job_url = r.headers["location"]
    page = client.get(job_url).text
    assert 'data-poll="' + job_url + '/progress"' in page
    deadline = time.monotonic() + 60
    while True:
        frag = client.get(job_url + "/progress").text
        if 'data-state="done"' in frag or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Failures count as failures: two imported, one failed with its reason.
    assert 'data-state="done"' in frag and "2 of 3 imported, 1 failed" in frag and "finished with failures" in frag
    assert "notes.txt" in frag and "upload a PNG, JPEG, WebP or SVG" in frag
    with world.sessions() as s:
        assert sorted(s.scalars(select(Work.title)).all()) == ["logo0", "logo1"]
        job = s.scalars(select(WebJob)).one()
        assert job.done == 3 and job.total == 3 and len(job.errors) == 1


def test_profile_saves_alert_mode_and_issues_an_api_token(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/profile").text)
    r = client.post(
        "/profile",
        data={
            "csrf_token": token,
            "alert_mode": "digest",
            "legal_name": "Ann Co",
            "postal_address": "2 Road",
            "phone": "123",
            "display_name": "Ann",
        },
    )
    assert r.status_code == 200 and "Saved." in r.text
    r = client.post("/profile/token", data={"csrf_token": token})
    new = re.search(r'id="new-token">([^<]+)<', r.text)
    assert new
    api = client  # the same app
    assert (
        api.get("/api/v1/works", headers={"Authorization": f"Bearer {new.group(1)}"}).status_code
        == 200
    )
    # The old token stopped working.
    assert (
        client.get(
            "/api/v1/works", headers={"Authorization": f"Bearer {world.tokens['ann@example.com']}"}
        ).status_code
        == 401
    )
    with world.sessions() as s:
        acct = s.scalars(select(Account).where(Account.email == "ann@example.com")).one()
        assert acct.alert_mode == "digest" and acct.legal_name == "Ann Co"
        assert new.group(1) not in (acct.api_token_hash or "")  # stored hashed


def test_reviewer_queue_is_ordered_by_confidence_then_age(world: World) -> None:
    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    wid = world.work(owner, logo_png(1))
    shot, _region = product_shot(logo_png(1))
    low_old = world.notice(
        owner,
        [world.match(wid, shot, url="https://a.example/1", score=0.6)],
        host="a.example",
        age=timedelta(days=3),
    )
    high_new = world.notice(
        owner, [world.match(wid, shot, url="https://b.example/1", score=0.95)], host="b.example"
    )
    high_old = world.notice(
        owner,
        [world.match(wid, shot, url="https://c.example/1", score=0.95)],
        host="c.example",
        age=timedelta(days=1),
    )
    html = world.client("rita@example.com").get("/review").text
    order = [int(x) for x in re.findall(r'<a href="/notices/(\d+)">#', html)]
    assert order == [high_old, high_new, low_old]


def test_admin_manages_sources_users_and_hosts(world: World) -> None:
    world.account("root@example.com", Role.ADMIN)
    client = world.client("root@example.com")
    token = csrf_from(client.get("/admin/sources").text)
    from crawler.service import SOURCE_KINDS

    kind = sorted(SOURCE_KINDS)[0]
    bad = client.post(
        "/admin/sources",
        data={"csrf_token": token, "name": "x", "kind": "gopher", "url": "https://x.example"},
    )
    assert bad.status_code == 422 and "unknown source kind" in bad.text
    ok = client.post(
        "/admin/sources",
        data={
            "csrf_token": token,
            "name": "feed",
            "kind": kind,
            "url": "https://feed.example/rss",
            "params": '{"tag": "art"}',
        },
    )
    assert ok.status_code == 303
    with world.sessions() as s:
        src = s.scalars(select(Source)).one()
        assert (src.kind, src.params, src.enabled) == (kind, {"tag": "art"}, True)
    client.post(f"/admin/sources/{src.id}/toggle", data={"csrf_token": token})
    with world.sessions() as s:
        assert s.get(Source, src.id).enabled is False  # type: ignore[union-attr]

    r = client.post(
        "/admin/users",
        data={
            "csrf_token": token,
            "email": "new@example.com",
            "role": "reviewer",
            "password": "long enough pw",
        },
    )
    assert r.status_code == 303
    assert (
        login(world.client(), "new@example.com", "long enough pw").headers["location"] == "/dashboard"
    )

    hosts = client.get("/admin/hosts")
    assert (
        hosts.status_code == 200
        and "pics.example" in hosts.text
        and "dmca-agent@pics.example" in hosts.text
    )
    override = world.settings.data_dir / "hosts.override.toml"
    bad = client.post("/admin/hosts", data={"csrf_token": token, "override": "[hosts\nbroken"})
    assert bad.status_code == 422 and "not valid TOML" in bad.text and not override.exists()
    bad = client.post(
        "/admin/hosts",
        data={
            "csrf_token": token,
            "override": '[hosts."x.example"]\nlaw = "dmca"\nemail = "not-an-address"\n',
        },
    )
    assert (
        bad.status_code == 422 and "is not an email address" in bad.text and not override.exists()
    )
    good = (
        '[hosts."pics.example"]\nname = "Pics (override)"\n'
        'domains = ["pics.example"]\nlaw = "dsa"\n'
        'email = "legal@pics.example"\nverify = false\n'
    )
    saved = client.post("/admin/hosts", data={"csrf_token": token, "override": good})
    assert saved.status_code == 200 and "Override saved." in saved.text
    assert override.read_text() == good
    assert "legal@pics.example" in saved.text and "Pics (override)" in saved.text
    from webapp.routes.admin import effective_host_directory

    entry = effective_host_directory(world.settings).lookup("https://pics.example/p/1")
    assert entry is not None and entry.law == "dsa" and entry.recipient == "legal@pics.example"


def test_services_mode_override_saved_on_the_web_reaches_drafting_elsewhere(
    tmp_path: Path, db_engine: Engine
) -> None:
    """The web app saves the admin's override; a worker with another DATA_DIR drafts with it,
    because in services mode the override is a database row, not a file in either DATA_DIR."""
    from matching import build_engine
    from notices.drafting import draft_for_match
    from storage.blobs import FolderBlobStore
    from storage.db import make_sessionmaker, session_scope
    from storage.models import Notice
    from webapp import create_app

    url = db_engine.url.render_as_string(hide_password=False)
    services = {"shared": {"kind": "services"}, "database_url": url}
    web_settings = make_settings(tmp_path / "web", **services)
    worker_settings = make_settings(tmp_path / "worker", **services)
    sessions = make_sessionmaker(db_engine)
    blobs = FolderBlobStore(web_settings.blob_dir())
    matcher = build_engine(web_settings)
    world = World(web_settings, sessions, blobs, matcher,
                  create_app(web_settings, sessions=sessions, blobs=blobs, engine=matcher))

    def drafted(owner_email: str, page: str) -> tuple[str, str]:
        owner = world.account(owner_email)
        work = world.work(owner, logo_png(3), kind="artwork")
        match_id = world.match(work, logo_png(3), url=page)
        with session_scope(sessions) as s:
            notice = draft_for_match(s, match_id, worker_settings)
            assert isinstance(notice, Notice)
            return notice.law, notice.recipient

    assert drafted("ann@example.com", "https://pics.example/p/1") == ("dmca", "dmca-agent@pics.example")
    world.account("root@example.com", Role.ADMIN)
    client = world.client("root@example.com")
    token = csrf_from(client.get("/admin/hosts").text)
    good = (
        '[hosts."pics.example"]\nname = "Pics (override)"\n'
        'domains = ["pics.example"]\nlaw = "dsa"\n'
        'email = "legal@pics.example"\nverify = false\n'
    )
    saved = client.post("/admin/hosts", data={"csrf_token": token, "override": good})
    assert saved.status_code == 200 and "Override saved." in saved.text and "shared_documents" in saved.text
    assert drafted("bob@example.com", "https://pics.example/p/2") == ("dsa", "legal@pics.example")
    for data_dir in (tmp_path / "web", tmp_path / "worker"):
        assert not (data_dir / "hosts.override.toml").exists()


def test_other_roles_cannot_use_admin_or_review_pages(world: World) -> None:
    world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    owner = world.client("ann@example.com")
    for path in ("/admin/sources", "/admin/users", "/admin/hosts", "/review"):
        assert owner.get(path).status_code == 403, path
    assert world.client("rita@example.com").get("/admin/users").status_code == 403


def test_a_form_post_is_committed_before_its_response_starts(world: World) -> None:
    """A browser follows the 303 at once, so the write must be durable before the redirect
    goes out. Regression: the login's session row was committed after the response was
    sent, the redirected GET /works sometimes found no session and bounced back to login."""
    import asyncio
    from collections.abc import MutableMapping
    from typing import Any
    from urllib.parse import urlencode

    from storage.models import WebSession

    world.account("ann@example.com")
    client = world.client()
    token = csrf_from(client.get("/login").text)
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    body = urlencode(
        {"email": "ann@example.com", "password": PASSWORD, "csrf_token": token}
    ).encode()
    seen: dict[str, int] = {}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            seen["status"] = int(message["status"])
            # Another connection, as the browser's next request would use.
            with world.sessions() as s:
                seen["sessions"] = len(s.scalars(select(WebSession)).all())

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/login",
        "raw_path": b"/login",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
            (b"cookie", cookie.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(world.app(scope, receive, send))
    assert seen == {"status": 303, "sessions": 1}


def test_every_route_commits_its_database_work_before_responding() -> None:
    """Every use of the db dependency is function-scoped (FastAPI's default 'request'
    scope runs the commit after the response has gone out)."""
    from fastapi.routing import APIRoute

    from webapp.deps import db

    def walk(dependant: object, route: str, found: list[str]) -> None:
        for sub in dependant.dependencies:  # type: ignore[attr-defined]
            if sub.call is db:
                found.append(f"{route}: scope={sub.scope!r}")
            walk(sub, route, found)

    from webapp.routes import admin, api, auth, owner, review

    uses: list[str] = []
    for module in (auth, owner, review, admin, api):
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            walk(route.dependant, f"{sorted(route.methods or ())} {route.path}", uses)
    assert len(uses) > 30
    assert [u for u in uses if not u.endswith("scope='function'")] == []
