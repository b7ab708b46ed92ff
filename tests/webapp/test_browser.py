"""Browser flows: Playwright drives Debian's chromium against a real uvicorn server.

Screenshots are saved under test-artifacts/ (gitignored) for people to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webapp_testkit import PASSWORD, World, logo_png, product_shot, serve

from storage.models import Notice, NoticeState, Role

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def server(world: World) -> Iterator[str]:
    with serve(world.app) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield pg
        context.close()
        browser.close()
        # A CSP violation or script error shows here; 404s for probed ids are expected.
        assert not [e for e in errors if "404" not in e], errors


def _path(page: Any) -> str:
    """The page's path and query, e.g. "/login?next=/works" (a suffix test would pass that
    for "/works" too)."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(page.url))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _login(page: Any, email: str) -> None:
    page.goto("/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def test_owner_logs_in_registers_a_logo_and_sees_it_listed(
    world: World, page: Any, artifacts: Path, tmp_path: Path
) -> None:
    world.account("ann@example.com")
    page.goto("/works")
    assert _path(page) == "/login?next=/works"
    page.screenshot(path=str(artifacts / "1-login.png"))
    _login(page, "ann@example.com")
    assert _path(page) == "/dashboard"  # everyone lands on the dashboard
    with page.expect_navigation():
        page.click("header nav >> text=Works")
    assert _path(page) == "/works"
    page.click("text=Register a work")
    logo_file = tmp_path / "acme-logo.png"
    logo_file.write_bytes(logo_png(1))
    page.set_input_files("input[name=file]", str(logo_file))
    page.fill("input[name=title]", "Acme rocket mark")
    page.check("input[name=kind][value=logo]")
    page.fill("input[name=registration_number]", "USPTO 1234567")
    page.fill("textarea[name=licensed_sites]", "shop.acme.example")
    page.screenshot(path=str(artifacts / "1-register-form.png"), full_page=True)
    with page.expect_navigation():
        page.click("button:has-text('Register')")
    page.wait_for_load_state("networkidle")
    assert "Registered." in page.inner_text("main")
    assert page.locator("img.large").evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=str(artifacts / "1-work-registered.png"), full_page=True)
    page.click("nav >> text=Works")
    row = page.locator("#works tbody tr")
    assert row.count() == 1
    assert "Acme rocket mark" in row.inner_text() and "USPTO 1234567" in row.inner_text()
    assert page.locator("#works img.thumb").evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=str(artifacts / "1-works-list.png"), full_page=True)


def test_reviewer_opens_a_match_sees_evidence_and_approves_the_notice(
    world: World, page: Any, artifacts: Path
) -> None:
    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    wid = world.work(owner, logo_png(1), "Acme poster", kind="artwork")
    shot, region = product_shot(logo_png(1))
    mid = world.match(
        wid,
        shot,
        url="https://pics.example/p/981",
        region=region,
        signals={"pdq": 0.74, "local": 0.96},
    )
    nid = world.draft(mid)
    _login(page, "rita@example.com")
    assert _path(page) == "/dashboard"
    with page.expect_navigation():
        page.click("header nav >> text=Review queue")
    assert _path(page) == "/review"
    page.screenshot(path=str(artifacts / "2-review-queue.png"), full_page=True)
    with page.expect_navigation():
        page.click(f"a[href='/notices/{nid}']")
    page.wait_for_load_state("networkidle")
    # Evidence: both images loaded, the region outlined over the upload.
    assert page.locator(f"img[src='/works/{wid}/image']").evaluate("img => img.naturalWidth") > 0
    polygon = page.locator("svg.overlay polygon.region")
    assert polygon.count() == 1 and polygon.bounding_box()["width"] > 50
    # The plain-language line first; the raw signals, formatted for people, in a details section.
    assert "Why it matched" in page.inner_text("main")
    assert "https://pics.example/p/981" in page.inner_text("main")
    page.screenshot(path=str(artifacts / "2-notice-evidence.png"), full_page=True)
    with page.expect_navigation():
        page.click(f"a[href='/matches/{mid}']")
    page.wait_for_load_state("networkidle")
    assert page.locator("svg.overlay polygon.region").count() == 1
    page.screenshot(path=str(artifacts / "2-match-evidence.png"), full_page=True)
    page.go_back()
    # The fair-use checklist: no factor applies.
    for key in ("commentary_or_criticism", "parody", "small_portion", "transformative"):
        page.check(f"input[name={key}][value=no]")
    page.check("input[name=none_applies][value=yes]")
    page.locator("#approve-form").screenshot(path=str(artifacts / "2-fair-use-checklist.png"))
    with page.expect_navigation():
        page.click("#approve-form button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert page.locator(".head-row .state").inner_text().strip() == "approved"
    page.screenshot(path=str(artifacts / "2-notice-approved.png"), full_page=True)
    with world.sessions() as s:
        notice = s.get(Notice, nid)
        assert notice is not None and notice.state == NoticeState.APPROVED
        assert notice.fair_use["reviewer"] == "rita@example.com"


def test_second_owner_cannot_reach_the_first_owners_work(
    world: World, page: Any, artifacts: Path
) -> None:
    ann = world.account("ann@example.com")
    world.account("bob@example.com")
    wid = world.work(ann, logo_png(1), "Ann private mark")
    shot, region = product_shot(logo_png(1))
    mid = world.match(wid, shot, url="https://pics.example/p/7", region=region)
    nid = world.draft(mid)
    _login(page, "bob@example.com")
    assert "Ann private mark" not in page.inner_text("main")
    page.screenshot(path=str(artifacts / "3-second-owner-works.png"), full_page=True)
    for path in (
        f"/works/{wid}",
        f"/matches/{mid}",
        f"/notices/{nid}",
        f"/works/{wid}/image",
        f"/matches/{mid}/image",
        f"/notices/{nid}/evidence.zip",
    ):
        response = page.goto(path)
        assert response is not None and response.status == 404, path
        assert "Ann private mark" not in page.content()
    page.goto(f"/works/{wid}")
    assert "404" in page.inner_text("h1")
    page.screenshot(path=str(artifacts / "3-not-found.png"), full_page=True)
    page.goto("/matches")
    assert "pics.example/p/7" not in page.inner_text("main")
