"""Logging in (issue 16, item 9): equal cost for unknown accounts, backoff that spares the owner,
forwarded addresses only from configured proxies."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from webapp_testkit import PASSWORD, World, csrf_from, login, make_settings, start_web_command, wait_until_answering

from storage.models import LoginFailure
from webapp import create_app
from webapp.security import LoginThrottle

ROOT = Path(__file__).resolve().parents[2]


class CountingHasher(PasswordHasher):
    """The real argon2 hasher, counting verifications (the expensive step of a login)."""

    def __init__(self, inner: PasswordHasher) -> None:
        super().__init__(
            time_cost=inner.time_cost,
            memory_cost=inner.memory_cost,
            parallelism=inner.parallelism,
        )
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


def _from(app: FastAPI, address: str) -> TestClient:
    """A browser connecting from ``address``."""
    return TestClient(app, follow_redirects=False, client=(address, 50000))


def test_unknown_and_known_accounts_cost_one_argon2_verification_each(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import webapp.security

    world.account("ann@example.com")
    counter = CountingHasher(webapp.security._hasher)
    monkeypatch.setattr(webapp.security, "_hasher", counter)
    cases = {
        "unknown account": ("nobody@example.com", "a wrong password"),
        "known account, wrong password": ("ann@example.com", "a wrong password"),
        "known account, right password": ("ann@example.com", PASSWORD),
    }
    work = {}
    for n, (name, (email, password)) in enumerate(cases.items()):
        before = counter.verified
        response = login(_from(world.app, f"192.0.2.{n + 1}"), email, password)
        assert response.status_code in (303, 400), (name, response.text)
        work[name] = counter.verified - before
    assert work == dict.fromkeys(cases, 1)


def test_failures_from_one_address_back_off_exponentially(world: World) -> None:
    throttle = LoginThrottle(free_per_ip=3, backoff_base_s=2, backoff_max_s=60)
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    ip = "198.51.100.9"
    with world.sessions() as s:
        now = t0
        waits = []
        for i in range(8):  # a different account each time: the address is what repeats
            waits.append(throttle.retry_after(s, f"user{i}@example.com", ip, now))
            throttle.record_failure(s, f"user{i}@example.com", ip, now)
            s.flush()
            now += timedelta(seconds=0.5)
        # Three free tries, then 2 s, 4 s, 8 s, ... after the last failure (less the 0.5 s gone by).
        assert waits == [0, 0, 0, 2, 4, 8, 16, 32]
        last = now - timedelta(seconds=0.5)
        assert throttle.retry_after(s, "x@example.com", ip, last + timedelta(seconds=63)) == 0
        assert throttle.retry_after(s, "x@example.com", ip, last + timedelta(seconds=50)) == 10  # capped at 60 s
        assert throttle.retry_after(s, "x@example.com", "198.51.100.10", now) == 0  # another address
        # Failures older than the address window are forgotten.
        assert throttle.retry_after(s, "x@example.com", ip, t0 + throttle.ip_window + timedelta(seconds=5)) == 0


def test_a_locked_account_still_lets_its_owner_in_from_a_known_browser(world: World) -> None:
    world.account("ann@example.com")
    owner = _from(world.app, "192.0.2.10")
    assert login(owner, "ann@example.com").status_code == 303  # this browser is now known
    assert owner.cookies.get("aw_device")
    owner.post("/logout", headers={"x-csrf-token": csrf_from(owner.get("/works").text)})

    # Someone guesses from many addresses: each address stays under its backoff.
    per_email = LoginThrottle().per_email
    for n in range(per_email):
        assert login(_from(world.app, f"203.0.113.{n + 1}"), "ann@example.com", "guess").status_code == 400
    stranger = login(_from(world.app, "203.0.113.200"), "ann@example.com", PASSWORD)
    assert stranger.status_code == 429 and int(stranger.headers["retry-after"]) > 0
    # An unknown email is locked the same way: the lock tells nothing about which accounts exist.
    for n in range(per_email):
        login(_from(world.app, f"203.0.113.{n + 1}"), "nobody@example.com", "guess")
    assert login(_from(world.app, "203.0.113.201"), "nobody@example.com", "guess").status_code == 429

    # The owner's browser holds the known-device cookie: the right password still works...
    back = login(owner, "ann@example.com")
    assert back.status_code == 303 and back.headers["location"] == "/dashboard"
    # ...and a wrong one from it is still counted and still refused.
    assert login(owner, "ann@example.com", "typo").status_code == 400
    # A forged device cookie does not pass.
    forged = _from(world.app, "203.0.113.202")
    forged.cookies.set("aw_device", "not-a-signed-token")
    assert login(forged, "ann@example.com", PASSWORD).status_code == 429


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("127.0.0.1", "203.0.113.5", [], "127.0.0.1"),  # no proxies configured: the header is ignored
        ("192.0.2.7", "203.0.113.5", ["10.0.0.0/8"], "192.0.2.7"),  # not from the proxy
        ("10.1.2.3", "203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),
        ("10.1.2.3", "1.2.3.4, 203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),  # the client wrote 1.2.3.4
        ("10.1.2.3", "203.0.113.5, 10.9.9.9", ["10.0.0.0/8"], "203.0.113.5"),  # two proxies
        ("10.1.2.3", "", ["10.0.0.0/8"], "10.1.2.3"),
        ("10.1.2.3", "not-an-ip", ["10.0.0.0/8"], "10.1.2.3"),
        ("::1", "2001:db8::5", ["::1"], "2001:db8::5"),
    ],
)
def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    peer: str, forwarded: str, trusted: list[str], expected: str
) -> None:
    from webapp.security import client_address

    assert client_address(peer, forwarded, trusted) == expected


def _failure_ips(world: World) -> list[str]:
    with world.sessions() as s:
        return list(s.scalars(select(LoginFailure.ip).order_by(LoginFailure.id)))


def test_the_throttle_counts_the_address_a_configured_proxy_names(world: World, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "proxied", web={"trusted_proxies": ["10.0.0.0/8"]})
    app = create_app(settings, sessions=world.sessions, blobs=world.blobs, engine=world.engine)
    via_proxy = _from(app, "10.0.0.2")
    page = via_proxy.get("/login")
    via_proxy.post(
        "/login",
        data={"email": "a@example.com", "password": "x", "csrf_token": csrf_from(page.text)},
        headers={"x-forwarded-for": "1.2.3.4, 203.0.113.77"},
    )
    direct = _from(world.app, "10.0.0.2")  # the default settings trust no proxy
    page = direct.get("/login")
    direct.post(
        "/login",
        data={"email": "a@example.com", "password": "x", "csrf_token": csrf_from(page.text)},
        headers={"x-forwarded-for": "203.0.113.78"},
    )
    assert _failure_ips(world) == ["203.0.113.77", "10.0.0.2"]


def test_settings_refuse_a_proxy_that_is_not_an_address(tmp_path: Path) -> None:
    from config.settings import ConfigError

    with pytest.raises(ConfigError, match="not an IP address or network"):
        make_settings(tmp_path, web={"trusted_proxies": ["proxy.example"]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_served_app_ignores_forwarded_for_from_a_local_client(tmp_path: Path) -> None:
    """Through ``artwatch web`` (real uvicorn): rotating X-Forwarded-For does not escape the backoff.

    Before the fix uvicorn trusted the header from any local client, so each
    try counted under a made-up address and was never slowed down."""
    port = _free_port()
    proc = start_web_command(tmp_path, port, capture=False)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/healthz", proc, timeout=60)
        statuses: list[int] = []
        with httpx.Client(base_url=base, timeout=30) as browser:
            token = csrf_from(browser.get("/login").text)
            for n in range(LoginThrottle().free_per_ip + 1):
                r: Any = browser.post(
                    "/login",
                    data={"email": f"user{n}@example.com", "password": "guess", "csrf_token": token},
                    headers={"x-forwarded-for": f"203.0.113.{n + 1}"},
                )
                statuses.append(r.status_code)
        assert statuses == [400] * LoginThrottle().free_per_ip + [429]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_passwords_are_stored_as_argon2id_hashes_and_sessions_as_digests(world: World) -> None:
    from storage.models import Account, WebSession

    world.account("ann@example.com")
    client = _from(world.app, "192.0.2.50")
    assert login(client, "ann@example.com").status_code == 303
    with world.sessions() as s:
        acct = s.scalars(select(Account)).one()
        assert acct.password_hash is not None and acct.password_hash.startswith("$argon2id$")
        assert PASSWORD not in acct.password_hash
        (session_row,) = s.scalars(select(WebSession))
        cookie = client.cookies.get("aw_session") or ""
        assert cookie and session_row.key_hash != cookie and cookie not in session_row.key_hash
