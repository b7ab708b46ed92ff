"""Every page the app serves fits a 390 px phone without sideways scrolling.

The tour below visits each HTML page of the route table (checked against it, so a new page
must join the tour) as the account that can see it, with long titles and URLs, notices in every
state, jobs finished and failed, a full uploads list, and the error pages. Screenshots of each page
at 390 px, and of the uploads list at 1280 px, go to test-artifacts/. The README's two pictures
(docs/screenshots/) are copies of ``readme-dashboard-1280.png`` and ``readme-match-evidence-390.png``
made by test_readme_screenshots.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_browser import _login, server  # noqa: F401  (server is a fixture)
from test_browser_dash import NARROW, WIDE, WIDEST_JS, _width, page  # noqa: F401  (page is a fixture)
from webapp_testkit import World, logo_png, product_shot

from notices.alerts import unsubscribe_url
from storage.db import session_scope
from storage.models import Notice, NoticeState, Role, Source, Upload, UploadStatus, WebJob
from webapp.app import route_table

pytestmark = pytest.mark.browser

# GET routes that are not pages (images, files, fragments, redirects, machine endpoints).
NOT_PAGES = {
    "/", "/healthz", "/favicon.ico", "/api/v1/openapi.json", "/matches.csv", "/notices.csv",
    "/works/{work_id}/image", "/matches/{match_id}/image", "/uploads/{upload_id}/image",
    "/notices/{notice_id}/evidence.zip", "/notices/{notice_id}/notice.eml", "/notices/{notice_id}/notice.pdf",
    "/jobs/{job_id}/progress",
    # The notice's HTML email exactly as it is sent, shown inside the notice page's sandboxed iframe
    # (which scrolls on its own); the notice page around it is in the tour.
    "/notices/{notice_id}/body.html",
}

LONG = "https://pics.example/users/someone-with-a-very-long-name/posts/" + "x" * 90


def _scene(world: World) -> dict[str, Any]:
    ann = world.account("ann@example.com")
    world.account("rev@example.com", Role.REVIEWER)
    world.account("root@example.com", Role.ADMIN)
    logo = logo_png(4, "ACME")
    work = world.work(ann, logo, "ACME logo with a rather long title that must wrap on a phone, " * 2)
    shot, region = product_shot(logo)
    # One host each, so each match gets its own notice, one in every state.
    matches = [world.match(work, shot, url=LONG.replace("pics.", f"pics{i}.") + f"/{i}", region=region,
                           score=0.9 - i / 100) for i in range(len(NoticeState))]
    notices = {state: world.draft(m) for state, m in zip(NoticeState, matches, strict=True)}
    assert len(set(notices.values())) == len(NoticeState)
    with session_scope(world.sessions) as s:
        for state, nid in notices.items():
            notice = s.get(Notice, nid)
            assert notice is not None
            notice.state = state
            if state in (NoticeState.SENT, NoticeState.RESOLVED):
                notice.sent_at = datetime.now(UTC)
        s.add(Source(name="intranet " + "y" * 60, kind="mastodon", url="http://10.0.0.5/" + "z" * 80,
                     last_error="BlockedAddress: refusing to connect to 10.0.0.5 at non-public address " * 3,
                     last_error_at=datetime.now(UTC)))
        s.add(Upload(canonical_url=LONG + "/failed", host="pics.example", page_url=LONG + "/failed",
                     image_url=LONG + ".jpg", status=UploadStatus.FAILED, error="cannot decode " + "q" * 120,
                     fetched_at=datetime.now(UTC)))
        done = WebJob(owner_id=ann, kind="import", state="done", total=3, done=3,
                      errors=[f"row {i}: {LONG} could not be read" for i in range(3)])
        failed = WebJob(owner_id=ann, kind="import", state="failed", total=2, done=1, errors=["x" * 200])
        s.add_all([done, failed])
        s.flush()
        jobs = [done.id, failed.id]
    return {"work": work, "match": matches[0], "notices": notices, "jobs": jobs,
            "unsub": unsubscribe_url(world.settings, ann).split("/unsubscribe/", 1)[1]}


def _tours(ids: dict[str, Any]) -> dict[str | None, list[str]]:
    n = ids["notices"]
    return {
        None: ["/login", f"/unsubscribe/{ids['unsub']}"],
        "ann@example.com": [
            "/dashboard", "/works", f"/works/{ids['work']}", f"/works/{ids['work']}/edit", "/works/new",
            "/works/import", "/matches", f"/matches/{ids['match']}", "/notices",
            *(f"/notices/{nid}" for nid in n.values()),
            *(f"/jobs/{j}" for j in ids["jobs"]), "/profile", "/works/99999",
        ],
        "rev@example.com": ["/dashboard", "/review", "/notices", *(f"/notices/{nid}" for nid in n.values()),
                            "/matches", f"/matches/{ids['match']}", "/uploads", "/uploads?status=failed"],
        "root@example.com": ["/dashboard", "/admin/sources", "/admin/users", "/admin/hosts", "/uploads"],
    }


def test_the_tour_visits_every_page_of_the_route_table(world: World) -> None:
    ids = _scene(world)
    visited = {re.sub(r"\?.*", "", p) for paths in _tours(ids).values() for p in paths}
    pattern = {path: re.compile("^" + re.sub(r"\{[a-z_]+\}", "[^/]+", path) + "$")
               for method, path in route_table(world.app) if method == "GET" and not path.startswith("/api/")
               and path not in NOT_PAGES and path != "/static"}
    missing = [path for path, rx in pattern.items() if not any(rx.match(v) for v in visited)]
    assert not missing, f"pages the 390 px tour does not visit: {missing}"


def test_every_page_fits_390_px(world: World, page: Any, artifacts: Path) -> None:  # noqa: F811
    ids = _scene(world)
    too_wide: list[str] = []
    page.set_viewport_size(NARROW)
    for email, paths in _tours(ids).items():
        page.context.clear_cookies()
        if email is not None:
            _login(page, email)
        who = (email or "anon").split("@")[0]
        for path in paths:
            page.goto(path)
            page.wait_for_load_state("networkidle")
            shown = "/unsubscribe/token" if path.startswith("/unsubscribe/") else path
            name = re.sub(r"[^a-z0-9]+", "-", shown.lower()).strip("-") or "home"
            page.screenshot(path=str(artifacts / f"uploads-{who}-{name}-390.png"), full_page=True)
            if _width(page) > 390:
                too_wide.append(f"{who} {path}: {_width(page)} px ({page.evaluate(WIDEST_JS)})")
    assert not too_wide, "pages wider than 390 px:\n" + "\n".join(too_wide)


def test_uploads_list_in_the_browser(world: World, page: Any, artifacts: Path) -> None:  # noqa: F811
    _scene(world)
    page.set_viewport_size(WIDE)
    _login(page, "rev@example.com")
    page.click("nav >> text=Uploads")
    page.wait_for_load_state("networkidle")
    assert page.locator("#uploads tbody tr").count() == len(NoticeState) + 1  # the matched uploads, the failed one
    # Thumbnails load (a broken image has naturalWidth 0).
    assert page.evaluate("() => Array.from(document.querySelectorAll('#uploads img.thumb'))"
                         ".every(i => i.complete && i.naturalWidth > 0)")
    page.select_option("select[name=status]", "failed")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    assert page.locator("#uploads tbody tr").count() == 1
    assert "cannot decode" in page.inner_text("#uploads")
    page.screenshot(path=str(artifacts / "uploads-list-failed-1280.png"), full_page=True)
    page.goto("/uploads")
    page.screenshot(path=str(artifacts / "uploads-list-1280.png"), full_page=True)



def test_readme_screenshots(world: World, page: Any, artifacts: Path) -> None:  # noqa: F811
    """The README's two pictures, from a plain scene: the staff dashboard at 1280 px, a match at 390 px."""
    ann = world.account("ann@example.com")
    world.account("rev@example.com", Role.REVIEWER)
    logo = logo_png(4, "ACME")
    work = world.work(ann, logo, "ACME logo")
    shot, region = product_shot(logo)
    first = world.match(work, shot, url="https://pics.example/p/1041", region=region, score=0.97)
    for i, host in enumerate(("shop.example", "forum.example", "pics.example")):
        world.match(work, shot, url=f"https://{host}/p/{i}", region=region, score=0.8 + i / 20,
                    age=timedelta(days=3 * i + 2))
    world.draft(first)
    with session_scope(world.sessions) as s:
        s.add(Source(name="intranet", kind="mastodon", url="http://10.0.0.5/",
                     last_error="BlockedAddress: refusing to connect to non-public address 10.0.0.5",
                     last_error_at=datetime.now(UTC)))
        s.add(Source(name="fediverse", kind="mastodon", url="https://m.example/", last_success_at=datetime.now(UTC)))
    page.set_viewport_size(WIDE)
    _login(page, "rev@example.com")
    page.goto("/dashboard")
    page.wait_for_load_state("networkidle")
    assert "failed" in page.inner_text("main")  # the failing source is said, with why
    page.screenshot(path=str(artifacts / "readme-dashboard-1280.png"))
    page.context.clear_cookies()
    page.set_viewport_size(NARROW)
    _login(page, "ann@example.com")
    page.goto(f"/matches/{first}")
    page.wait_for_load_state("networkidle")
    assert _width(page) <= 390
    page.set_viewport_size({"width": 390, "height": 1500})  # tall enough for both images, still a phone's width
    page.screenshot(path=str(artifacts / "readme-match-evidence-390.png"))
