"""Browser flow, review to sent: a reviewer picks the recipient for an unknown host, is refused
approval (answers kept, the questions named), approves, sends over SMTP (a real aiosmtpd
server), records the host's reply, and reads the case history; at 1280 px and 390 px.

Screenshots go to test-artifacts/review-*.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from review_kit import Inbox, Pages
from sqlalchemy import func, select
from webapp_testkit import PASSWORD, World, logo_png, product_shot, serve

from storage.models import AuditEvent, Match, MatchStatus, Notice, NoticeState, Role

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture
def base_url(send_world: World) -> Iterator[str]:
    with serve(send_world.app) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture
def browser(base_url: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _page(browser: Any, base_url: str, width: int) -> tuple[Any, list[str]]:
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return page, errors


def _submit(page: Any, selector: str) -> None:
    with page.expect_navigation():
        page.click(selector)
    page.wait_for_load_state("networkidle")


def _fits(page: Any, selector: str, width: int) -> None:
    """Every element matched lies within the viewport's width (no sideways scrolling for it)."""
    right = page.locator(selector).evaluate_all("els => Math.max(0, ...els.map(e => e.getBoundingClientRect().right))")
    assert right <= width + 1, f"{selector} reaches {right}px at {width}px"


@pytest.mark.parametrize("width", [1280, 390])
def test_reviewer_takes_a_notice_from_unknown_host_to_removed(
    send_world: World, inbox: tuple[Inbox, int], pages: Pages, browser: Any, base_url: str,
    artifacts: Path, width: int,
) -> None:
    world, (box, _) = send_world, inbox
    owner = world.account("ann@example.com")
    world.account("rita@example.com", Role.REVIEWER)
    wid = world.work(owner, logo_png(1), "Acme poster", kind="artwork")
    shot, region = product_shot(logo_png(1))
    mid = world.match(wid, shot, url=pages.url("/p/77"), region=region)
    nid = world.draft(mid)
    page, errors = _page(browser, base_url, width)
    tag = f"review-{width}"

    page.goto("/login")
    page.fill("input[name=email]", "rita@example.com")
    page.fill("input[name=password]", PASSWORD)
    _submit(page, "button[type=submit]")
    page.goto(f"/notices/{nid}")
    page.wait_for_load_state("networkidle")
    flags = page.locator("table.kv").first
    assert "not in the host directory" in flags.inner_text()
    _fits(page, "#recipient-form, #recipient-form *", width)
    flags.screenshot(path=str(artifacts / f"{tag}-1-unknown-host-picker.png"))

    # A refused approval keeps the answers and names the questions.
    for key in ("commentary_or_criticism", "parody", "small_portion"):
        page.check(f"input[name={key}][value=no]")
    _submit(page, "#approve-form button[type=submit]")
    alert = page.locator("[role=alert]").inner_text()
    assert "Does the use transform the work" in alert and "transformative" not in alert
    assert page.is_checked("input[name=parody][value=no]")
    assert not page.is_checked("input[name=transformative][value=no]")
    page.locator("[role=alert]").screenshot(path=str(artifacts / f"{tag}-2-approval-refused.png"))
    with world.sessions() as s:
        events_before = s.scalar(select(func.count(AuditEvent.id)))
    page.reload()  # post/redirect/get: a refresh re-posts nothing
    page.wait_for_load_state("networkidle")
    with world.sessions() as s:
        assert s.scalar(select(func.count(AuditEvent.id))) == events_before

    # Pick from the host directory's entries, beside the flag.
    page.select_option("#recipient-form select[name=entry]", "pics.example")
    _submit(page, "#recipient-form button[type=submit]")
    assert "The notice will go to dmca-agent@pics.example" in page.inner_text("main")
    for key in ("commentary_or_criticism", "parody", "small_portion", "transformative"):
        page.check(f"input[name={key}][value=no]")
    page.check("input[name=none_applies][value=yes]")
    _submit(page, "#approve-form button[type=submit]")
    assert page.locator(".head-row .state").inner_text().strip() == "approved"
    _fits(page, ".next-step, .next-step *", width)
    page.screenshot(path=str(artifacts / f"{tag}-3-approved-send.png"))
    with page.expect_download() as dl:
        page.click("a[href$='/notice.pdf']")
    assert dl.value.suggested_filename == f"notice-{nid}.pdf"

    _submit(page, "#send-form button[type=submit]")
    assert "Sent." in page.inner_text("main")
    assert len(box.messages) == 1 and "dmca-agent@pics.example" in box.messages[0][0]
    page.reload()
    page.wait_for_load_state("networkidle")
    assert len(box.messages) == 1  # the refresh did not send it again

    page.check("#reply-form input[name=reply][value=removed]")
    page.fill("#reply-form input[name=note]", "removed by the host")
    _submit(page, "#reply-form button[type=submit]")
    assert page.locator(".head-row .state").inner_text().strip() == "resolved"
    history = page.locator(".timeline").inner_text()
    assert "rita@example.com sent the notice to dmca-agent@pics.example by email" in history
    assert "closed the case: the content was removed" in history
    _fits(page, ".timeline, .timeline *", width)
    page.locator(".timeline-wrap").screenshot(path=str(artifacts / f"{tag}-4-case-history.png"))

    page.goto(f"/matches/{mid}")
    page.wait_for_load_state("networkidle")
    match_history = page.locator(".timeline").inner_text()
    assert "found Acme poster" in match_history and "changed the match from notice sent to removed" in match_history
    page.locator(".timeline-wrap").screenshot(path=str(artifacts / f"{tag}-5-match-history.png"))
    with world.sessions() as s:
        notice, match = s.get(Notice, nid), s.get(Match, mid)
        assert notice is not None and notice.state == NoticeState.RESOLVED and notice.resolution == "removed"
        assert match is not None and match.status == MatchStatus.REMOVED
    page.context.close()
    assert not [e for e in errors if "404" not in e], errors
