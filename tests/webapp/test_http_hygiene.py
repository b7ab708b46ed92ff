"""Smaller web hardening (issue 16, item 10): huge numbers, UTC offsets, Allow, HSTS, account emails."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, make_settings

from storage.models import Account, Role
from webapp import create_app

HUGE = str(2**63)  # one past the largest 64-bit integer either database stores

SECURITY_HEADERS = ("x-content-type-options", "content-security-policy", "x-frame-options", "referrer-policy")


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/works/{HUGE}",
        f"/api/v1/matches/{HUGE}",
        f"/api/v1/notices/{HUGE}",
        f"/api/v1/matches?offset={HUGE}",
        f"/api/v1/notices?offset={HUGE}",
        f"/api/v1/matches?work_id={HUGE}",
    ],
)
def test_numbers_past_64_bits_are_invalid_input_not_a_bare_500(world: World, path: str) -> None:
    world.account("ann@example.com")
    r = TestClient(world.app, raise_server_exceptions=False,
                   headers={"Authorization": f"Bearer {world.tokens['ann@example.com']}"}).get(path)
    assert r.status_code in (404, 422), (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == r.status_code
    for name in SECURITY_HEADERS:
        assert name in r.headers, name


def test_a_page_with_a_huge_id_answers_with_an_error_page(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    r = client.get(f"/works/{HUGE}")
    assert r.status_code in (404, 422) and "text/html" in r.headers["content-type"]
    for name in SECURITY_HEADERS:
        assert name in r.headers, name


def test_an_unexpected_error_still_carries_the_security_headers(world: World) -> None:
    def boom() -> None:
        raise RuntimeError("unexpected")

    world.app.add_api_route("/api/v1/boom", boom, include_in_schema=False)

    r = TestClient(world.app, raise_server_exceptions=False).get("/api/v1/boom")
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert "unexpected" not in r.text  # the traceback goes to the log, not to the client
    for name in SECURITY_HEADERS:
        assert name in r.headers, name


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.utcoffset() is not None, f"{text!r} has no UTC offset"
    assert value.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return value


def test_api_timestamps_carry_their_utc_offset(world: World) -> None:
    owner = world.account("ann@example.com")
    work = world.work(owner, logo_png(1))
    match = world.match(work, logo_png(1), url="https://pics.example/p/1")
    world.draft(match)
    api = world.api("ann@example.com")
    (w,) = api.get("/api/v1/works").json()
    _aware(w["created_at"])
    (m,) = api.get("/api/v1/matches").json()
    _aware(m["created_at"])
    _aware(m["captured_at"])
    notices = api.get("/api/v1/notices").json()
    assert notices
    for n in notices:
        _aware(n["created_at"])


def test_method_not_allowed_names_every_allowed_method(world: World) -> None:
    world.account("ann@example.com")
    api = world.api("ann@example.com")
    r = api.put("/api/v1/works/1")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET, HEAD"
    r = api.patch("/api/v1/works")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
    page = TestClient(world.app).put("/healthz")
    assert page.status_code == 405 and page.headers["allow"] == "GET, HEAD"


def test_hsts_is_sent_only_when_the_public_url_is_https(world: World, tmp_path: Path) -> None:
    assert "strict-transport-security" not in TestClient(world.app).get("/login").headers
    https = make_settings(tmp_path / "https", web={"base_url": "https://artwatch.example"})
    app = create_app(https, sessions=world.sessions, blobs=world.blobs, engine=world.engine)
    client = TestClient(app, raise_server_exceptions=False)
    for path in ("/login", "/nothing-here", "/api/v1/works"):
        assert client.get(path).headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.parametrize(
    "email", ["new@example.com, eve@evil.test", "new@example.com;eve@evil.test", "New <new@example.com>"]
)
def test_admin_cannot_create_an_account_with_more_than_one_address(world: World, email: str) -> None:
    world.account("root@example.com", Role.ADMIN)
    client = world.client("root@example.com")
    token = csrf_from(client.get("/admin/users").text)
    r = client.post(
        "/admin/users",
        data={"csrf_token": token, "email": email, "role": "owner", "password": "long enough pw"},
    )
    assert r.status_code == 422 and "enter one valid email address" in r.text
    with world.sessions() as s:
        assert list(s.scalars(select(Account.email))) == ["root@example.com"]


def test_no_alert_goes_to_a_stored_address_list(world: World) -> None:
    """An account row from before the address check, holding a list, gets no email (it would add recipients)."""
    from notices.alerts import send_instant_alert

    owner = world.account("ann@example.com, eve@evil.test")
    work = world.work(owner, logo_png(2))
    match = world.match(work, logo_png(2), url="https://pics.example/p/2")
    with world.sessions() as s:
        # SMTP on port 9 of localhost would refuse; the check comes before any connection.
        assert send_instant_alert(s, world.blobs, world.settings, match) is False
