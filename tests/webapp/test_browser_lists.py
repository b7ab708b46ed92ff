"""Browser flows for lists and triage: bulk and single decisions, the plain-language evidence
line, and the review queue's keyboard shortcuts, at 1280 px and 390 px.

Screenshots go to test-artifacts/ (gitignored), named lists-*.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_browser import _login, _path, page, server  # noqa: F401 - the fixtures come with the helpers
from webapp_testkit import World, logo_png, product_shot

from storage.models import Match, MatchStatus, Role

pytestmark = pytest.mark.browser

WIDTHS = (1280, 390)


def _no_sideways_scroll(page: Any) -> None:  # noqa: F811
    width = page.evaluate("() => document.querySelector('main').scrollWidth")
    assert width <= page.viewport_size["width"], f"main is {width} px wide"


@pytest.mark.parametrize("width", WIDTHS)
def test_owner_triages_matches_in_bulk_and_one_at_a_time(
    world: World, page: Any, artifacts: Path, width: int  # noqa: F811
) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme rocket")
    shot, region = product_shot(logo_png(1))
    mids = [
        world.match(wid, shot, url=f"https://pics{i}.example/p/{i}", region=region, score=0.9 - i / 10,
                    signals={"local": 0.97, "pdq": 0.0, "inliers": 47.0 - i, "tentative": 80.0, "coverage": 0.5})
        for i in range(3)
    ]
    _login(page, "ann@example.com")
    page.goto("/matches")
    assert page.locator("table.matches tbody tr").count() == 3
    # Thumbnails load lazily: bring the first into view and wait until it has decoded.
    thumb = page.locator("table.matches img.thumb").first
    thumb.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(),
                           timeout=15_000)
    _no_sideways_scroll(page)
    page.screenshot(path=str(artifacts / f"lists-matches-{width}.png"), full_page=True)
    # Bulk: check two rows, ignore them.
    page.check(f"input[name=ids][value='{mids[1]}']")
    page.check(f"input[name=ids][value='{mids[2]}']")
    page.select_option("#bulk-matches select[name=decision]", "ignore")
    with page.expect_navigation():
        page.click("#bulk-matches button[type=submit]")
    assert "2 matches marked ignore" in page.inner_text("main")
    assert page.locator("table.matches tbody tr").count() == 1  # ignored ones leave the default list
    page.screenshot(path=str(artifacts / f"lists-matches-after-bulk-{width}.png"), full_page=True)
    # One at a time, from the match page: the reason comes first, the actions at the top.
    page.goto(f"/matches/{mids[0]}")
    why = page.inner_text("p.why")
    assert "47 matching points" in why and "of the upload" in why
    assert not page.locator("details.signals").evaluate("d => d.open")
    _no_sideways_scroll(page)
    page.screenshot(path=str(artifacts / f"lists-match-evidence-{width}.png"), full_page=True)
    with page.expect_navigation():
        page.click(".triage-actions button[value=infringing]")
    assert "1 match marked infringing" in page.inner_text("main")
    page.screenshot(path=str(artifacts / f"lists-match-infringing-{width}.png"), full_page=False)
    with world.sessions() as s:
        got = [s.get(Match, m).status for m in mids]  # type: ignore[union-attr]
    assert got == [MatchStatus.INFRINGING, MatchStatus.DISMISSED, MatchStatus.DISMISSED]
    # Filters and search travel in the address.
    page.goto("/matches?status=all")
    page.fill("input[name=q]", "pics1")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    assert "q=pics1" in _path(page) and page.locator("table.matches tbody tr").count() == 1


@pytest.mark.parametrize("width", WIDTHS)
def test_reviewer_walks_the_queue_with_the_keyboard(
    world: World, page: Any, artifacts: Path, width: int  # noqa: F811
) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    wid = world.work(owner, logo_png(1), "Acme poster", kind="artwork")
    shot, region = product_shot(logo_png(1))
    n1 = world.draft(world.match(wid, shot, url="https://pics.example/p/1", region=region, score=0.95))
    n2 = world.draft(world.match(wid, shot, url="https://other.example/p/2", region=region, score=0.8))
    _login(page, "rita@example.com")
    page.goto("/review")
    rows = page.locator("table.notices tbody tr")
    assert rows.count() == 2
    # Typing in the search field is not a shortcut.
    page.click("input[name=q]")
    page.keyboard.type("j")
    assert page.locator("tr.current").count() == 0
    page.locator("h1").click()
    page.keyboard.press("j")
    assert "current" in (rows.nth(0).get_attribute("class") or "")
    page.keyboard.press("j")
    assert "current" in (rows.nth(1).get_attribute("class") or "")
    page.keyboard.press("k")
    assert "current" in (rows.nth(0).get_attribute("class") or "")
    page.keyboard.press("?")
    assert page.locator("#shortcut-help").is_visible()
    assert "next row" in page.inner_text("#shortcut-help")
    page.screenshot(path=str(artifacts / f"lists-review-shortcuts-{width}.png"), full_page=False)
    page.keyboard.press("Escape")
    assert not page.locator("#shortcut-help").is_visible()
    _no_sideways_scroll(page)
    page.screenshot(path=str(artifacts / f"lists-review-queue-{width}.png"), full_page=True)
    with page.expect_navigation():
        page.keyboard.press("e")
    assert _path(page) == f"/notices/{n1}"
    assert page.url.endswith("#evidence")
    page.goto("/review")
    page.keyboard.press("j")
    page.keyboard.press("j")
    with page.expect_navigation():
        page.keyboard.press("a")
    assert _path(page) == f"/notices/{n2}" and page.url.endswith("#approve-form")
