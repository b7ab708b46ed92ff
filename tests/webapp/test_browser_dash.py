"""Layout in a real browser: no page scrolls sideways at 390 px, the menu collapses,
dark mode follows the system, and axe-core finds no serious or critical violations.

axe-core comes from the npm registry, pinned by version and sha512 (the registry's
``dist.integrity``), and is kept in .cache/ (gitignored); the ``axe_script``
fixture fetches it with ``npm pack`` when it is missing.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_browser import ARGS, CHROMIUM, _login, server  # noqa: F401  (server is a fixture)
from webapp_testkit import World, logo_png, product_shot

from storage.db import session_scope
from storage.models import NoticeItem, Role, Source

pytestmark = pytest.mark.browser

AXE_VERSION = "4.10.3"
AXE_SHA512 = "Xm7bpRXnDSX2YE2YFfBk2FnF0ep6tmG7xPh8iHee8MIcrgq762Nkce856dYtJYLkuIoYZvGfTs/PbZhideTcEg=="
CACHE = Path(__file__).resolve().parents[2] / ".cache" / f"axe-core-{AXE_VERSION}"
NARROW = {"width": 390, "height": 844}
WIDE = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def axe_script() -> Path:
    script = CACHE / "axe.min.js"
    if script.exists():
        return script
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: install Node.js (apt-get install -y npm) to fetch axe-core")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "pack", f"axe-core@{AXE_VERSION}", "--pack-destination", str(CACHE)],
                   check=True, capture_output=True, timeout=300)
    tarball = CACHE / f"axe-core-{AXE_VERSION}.tgz"
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != AXE_SHA512:
        tarball.unlink()
        pytest.fail(f"axe-core {AXE_VERSION} from the registry has sha512 {digest}, expected {AXE_SHA512}")
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("package/axe.min.js")
        assert member is not None
        script.write_bytes(member.read())
    return script


@pytest.fixture
def page(server: str) -> Iterator[Any]:  # noqa: F811
    """test_browser's page, except that the context lets axe-core's injected script past
    the app's CSP (script-src 'self'); the app's own pages still must not log errors."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900}, bypass_csp=True)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield pg
        context.close()
        browser.close()
        # The missing work in the tour is a 404 on purpose; anything else (a CSP violation) is not.
        assert not [e for e in errors if "404" not in e], errors


def _serious(page: Any, axe: Path) -> list[str]:
    page.add_script_tag(path=str(axe))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _width(page: Any) -> int:
    return int(page.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"))


# The innermost elements reaching past 390 px (what to fix when the page is too wide).
WIDEST_JS = """() => Array.from(document.querySelectorAll('body *'))
  .filter(el => el.getBoundingClientRect().right > 391)
  .filter(el => !Array.from(el.children).some(c => c.getBoundingClientRect().right > 391))
  .slice(0, 3).map(el => el.tagName.toLowerCase() + (el.className ? '.' + el.className : '')
    + ' ' + Math.round(el.getBoundingClientRect().right) + 'px')"""


def _scene(world: World) -> dict[str, int]:
    ann = world.account("ann@example.com")
    world.account("rev@example.com", Role.REVIEWER)
    world.account("root@example.com", Role.ADMIN)
    logo = logo_png(4, "ACME")
    work = world.work(ann, logo, "ACME logo with a rather long title that must wrap on a phone")
    shot, region = product_shot(logo)
    long_url = "https://pics.example/users/someone-with-a-long-name/posts/" + "x" * 80
    match = world.match(work, shot, url=long_url, region=region)
    world.match(work, shot, url="https://other.example/p/2", region=region)
    notice = world.draft(match)
    with session_scope(world.sessions) as s:
        s.add(Source(name="intranet", kind="mastodon", url="http://10.0.0.5/",
                     last_error="BlockedAddress: refusing to connect to 10.0.0.5 at non-public address 10.0.0.5",
                     last_error_at=datetime.now(UTC)))
        s.add(Source(name="fediverse", kind="mastodon", url="https://m.example/", last_success_at=datetime.now(UTC)))
        for item in s.query(NoticeItem).filter(NoticeItem.notice_id == notice):
            item.online, item.checked_at = "removed", datetime.now(UTC)
    return {"work": work, "match": match, "notice": notice}


def _logout(page: Any) -> None:
    page.context.clear_cookies()


AXE_PAGES = {"/login", "/dashboard", "/review", "/works", "/uploads"}


def test_pages_fit_390_px_and_pass_axe(world: World, page: Any, axe_script: Path, artifacts: Path) -> None:
    ids = _scene(world)
    tours = {
        "ann@example.com": ["/dashboard", "/works", f"/works/{ids['work']}", "/works/new", "/works/import",
                            "/matches", f"/matches/{ids['match']}", "/notices", f"/notices/{ids['notice']}",
                            "/profile", "/works/99999"],
        "rev@example.com": ["/dashboard", "/review", "/notices", f"/notices/{ids['notice']}", "/matches", "/uploads"],
        "root@example.com": ["/dashboard", "/admin/sources", "/admin/users", "/admin/hosts"],
    }
    too_wide: list[str] = []
    violations: list[str] = []
    for size_name, size in (("390", NARROW), ("1280", WIDE)):
        page.set_viewport_size(size)
        _logout(page)
        page.goto("/login")
        if size is NARROW:
            too_wide += [f"/login: {_width(page)}"] if _width(page) > 390 else []
        violations += [f"/login {size_name}: {v}" for v in _serious(page, axe_script)]
        page.screenshot(path=str(artifacts / f"dash-login-{size_name}.png"), full_page=True)
        for email, paths in tours.items():
            _logout(page)
            _login(page, email)
            for path in paths:
                page.goto(path)
                page.wait_for_load_state("networkidle")
                who = email.split("@")[0]
                name = path.strip("/").replace("/", "-") or "home"
                page.screenshot(path=str(artifacts / f"dash-{who}-{name}-{size_name}.png"), full_page=True)
                if size is NARROW and _width(page) > 390:
                    too_wide.append(f"{who} {path}: {_width(page)} px ({page.evaluate(WIDEST_JS)})")
                base = "/notices/{id}" if path.startswith("/notices/") else path
                if base in AXE_PAGES or base == "/notices/{id}":
                    violations += [f"{who} {path} {size_name}: {v}" for v in _serious(page, axe_script)]
    assert not too_wide, f"pages wider than 390 px: {too_wide}"
    assert not violations, "\n".join(violations)


def test_menu_collapses_on_a_phone_and_dark_mode_follows_the_system(
    world: World, page: Any, axe_script: Path, artifacts: Path
) -> None:
    _scene(world)
    page.set_viewport_size(NARROW)
    _login(page, "root@example.com")
    assert page.url.endswith("/dashboard")
    menu = page.locator("#site-menu")
    assert not menu.is_visible()
    header_h = page.locator("header.top").bounding_box()["height"]
    assert header_h < 70, f"the collapsed header is {header_h} px tall"
    page.click("button.menu-toggle")
    assert menu.is_visible() and page.get_attribute("button.menu-toggle", "aria-expanded") == "true"
    page.screenshot(path=str(artifacts / "dash-menu-open-390.png"))
    assert page.locator("nav >> text=Users").is_visible()
    page.click("button.menu-toggle")
    assert not menu.is_visible()

    light = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert light != dark and dark == "rgb(16, 20, 28)"
    card = page.evaluate("() => getComputedStyle(document.querySelector('.card')).backgroundColor")
    assert card == "rgb(24, 30, 41)"
    page.set_viewport_size(WIDE)
    page.screenshot(path=str(artifacts / "dash-overview-dark-1280.png"), full_page=True)
    assert not _serious(page, axe_script), "axe violations in dark mode"
    # The failing source says why and how to opt in, next to its "crawl now" button.
    row = page.locator("#sources tr", has_text="intranet")
    assert "crawler.allow_internal" in row.inner_text()
    with page.expect_navigation():
        row.locator("button", has_text="Crawl now").click()
    assert "Crawl of intranet queued" in page.inner_text("main")
    assert page.evaluate("() => document.querySelector('link[rel=icon]').href").endswith("/static/favicon.svg")
