"""Passwords, API tokens, sessions, CSRF tokens, signed links and login throttling.

Secrets at rest are never stored in the clear: passwords as argon2id hashes,
API tokens and session keys as SHA-256 digests (they are 256-bit random
values, so a fast hash is enough and lookups stay indexed).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.models import Account, LoginFailure, WebSession
from storage.passwords import PASSWORD_HASHER, hash_password
from storage.secret_key import UNSUBSCRIBE_SALT, resolve_secret_key

__all__ = [
    "TOKEN_PREFIX",
    "LoginThrottle",
    "Signer",
    "account_for_token",
    "client_address",
    "end_session",
    "hash_password",
    "issue_api_token",
    "new_session",
    "resolve_secret_key",
    "security_headers",
    "session_account",
    "token_digest",
    "verify_password",
]

TOKEN_PREFIX = "aw_"
SESSION_DAYS = 14
DEVICE_DAYS = 365

_hasher = PASSWORD_HASHER  # storage.passwords: one set of parameters for hashing and verifying
# A hash to compare against when the account does not exist, so a missing
# account costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash("artwatch-dummy-password")


_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def security_headers(https: bool) -> dict[str, str]:
    """Headers every response carries, error pages and unexpected 500s included.

    ``https``: the public URL (web.base_url) is https, so browsers are told to
    use nothing else for a year (HSTS); over plain http the header would be
    ignored, and sending it would break a later switch back."""
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Content-Security-Policy": _PAGE_CSP,
        "X-Frame-Options": "DENY",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return headers


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether the password matches; ``None`` (no such account, no password) never does.

    Callers pass ``None`` for an unknown account instead of skipping the call:
    the dummy hash is verified then, so a login for an account that does not
    exist costs one argon2 verification like one that does, and the response
    time does not tell which accounts exist.
    """
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def client_address(peer: str, forwarded_for: str, trusted_proxies: Sequence[str]) -> str:
    """The address a request came from, for throttling and logs.

    ``peer`` is the connecting socket's address. X-Forwarded-For is believed
    only when the peer is one of ``trusted_proxies`` (addresses or networks),
    and then only up to the first hop that is not itself a trusted proxy,
    read from the right: everything left of it was written by the client and
    proves nothing. With no trusted proxies (the default) the header is
    ignored, so no client can pick the address it is throttled under.
    """
    networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in networks)

    if not networks or not trusted(peer):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: count the proxy, never a made-up name
    return peer


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_api_token(account: Account) -> str:
    """Give the account a new API token (replacing any old one); return it once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    account.api_token_hash = token_digest(token)
    return token


def account_for_token(session: Session, token: str) -> Account | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    return session.scalar(select(Account).where(Account.api_token_hash == token_digest(token)))


def new_session(session: Session, account: Account, now: datetime | None = None) -> str:
    """Start a browser session for the account; return the cookie value."""
    now = now or datetime.now(UTC)
    key = secrets.token_urlsafe(32)
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    session.add(
        WebSession(
            key_hash=token_digest(key),
            account_id=account.id,
            created_at=now,
            expires_at=now + timedelta(days=SESSION_DAYS),
        )
    )
    return key


def session_account(session: Session, key: str) -> Account | None:
    row = session.scalar(select(WebSession).where(WebSession.key_hash == token_digest(key)))
    if row is None:
        return None
    expires = (
        row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    )
    if expires <= datetime.now(UTC):
        return None
    return session.get(Account, row.account_id)


def end_session(session: Session, key: str) -> None:
    session.execute(delete(WebSession).where(WebSession.key_hash == token_digest(key)))


class Signer:
    """Signed, expiring tokens for CSRF and for links that work without logging in."""

    def __init__(self, secret_key: str) -> None:
        self._csrf = URLSafeTimedSerializer(secret_key, salt="artwatch.csrf")
        self._unsub = URLSafeTimedSerializer(secret_key, salt=UNSUBSCRIBE_SALT)
        self._device = URLSafeTimedSerializer(secret_key, salt="artwatch.device")
        self._flash = URLSafeTimedSerializer(secret_key, salt="artwatch.flash")

    def flash_token(self, payload: dict[str, Any]) -> str:
        """A one-page message (an outcome, a refusal and its reasons) carried across a redirect,
        so that the page after a POST is a GET (post/redirect/get) and shows only what we wrote."""
        return self._flash.dumps(payload)

    def flash_payload(self, token: str, max_age: int = 3600) -> dict[str, Any]:
        try:
            value = self._flash.loads(token, max_age=max_age)
        except BadSignature:
            return {}
        return value if isinstance(value, dict) else {}

    def device_token(self, account_id: int) -> str:
        """The known-device cookie a browser gets when it logs in to the account.

        While the account is locked by failed logins, a browser holding one
        may still log in with the right password (see :class:`LoginThrottle`)."""
        return self._device.dumps({"a": account_id, "n": secrets.token_urlsafe(8)})

    def device_account(self, token: str, max_age: int = DEVICE_DAYS * 86400) -> int | None:
        try:
            value = self._device.loads(token, max_age=max_age)
        except BadSignature:
            return None
        if isinstance(value, dict) and isinstance(value.get("a"), int):
            return int(value["a"])
        return None

    def csrf_token(self, binding: str) -> str:
        """A token valid only for the browser (session or pre-login cookie) it is bound to."""
        return self._csrf.dumps(token_digest(binding))

    def check_csrf(self, token: str, binding: str, max_age: int = 12 * 3600) -> bool:
        try:
            value = self._csrf.loads(token, max_age=max_age)
        except BadSignature:
            return False
        return isinstance(value, str) and hmac.compare_digest(value, token_digest(binding))

    def unsubscribe_token(self, account_id: int) -> str:
        return self._unsub.dumps({"a": account_id})

    def unsubscribe_account(self, token: str) -> int | None:
        try:
            value = self._unsub.loads(token, max_age=400 * 86400)
        except BadSignature:
            return None
        if isinstance(value, dict) and isinstance(value.get("a"), int):
            return int(value["a"])
        return None


@dataclass(frozen=True)
class LoginThrottle:
    """Slow password guessing without locking the owner out.

    Two rules, both over failures kept in the database (every web process
    shares the count):

    - **Per client address, exponential backoff.** The first
      ``free_per_ip`` failures from an address within ``ip_window`` cost
      nothing; after that each try must wait ``backoff_base_s`` doubled per
      further failure since the address's last failure, up to
      ``backoff_max_s``. The address is the connecting one unless a
      configured proxy names it (:func:`client_address`).
    - **Per account, a lock that known devices pass.** ``per_email``
      failures for one email within ``window`` lock that account against
      browsers that have never logged in to it, so many addresses cannot
      share one guessing budget. A browser that holds the account's
      known-device cookie (set at each successful login, signed, kept
      ``DEVICE_DAYS``) still logs in with the right password: the cookie is
      the second factor that lets the owner through while an attacker
      without it keeps failing. Unknown emails are counted and locked like
      known ones, so the lock says nothing about which accounts exist.
    """

    per_email: int = 10
    window: timedelta = timedelta(minutes=15)
    free_per_ip: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: int = 900
    ip_window: timedelta = timedelta(hours=1)

    def retry_after(
        self,
        session: Session,
        email: str,
        ip: str,
        now: datetime | None = None,
        *,
        known_device: bool = False,
    ) -> int:
        """Seconds until a login may be tried again; 0 when allowed now."""
        now = now or datetime.now(UTC)
        waits = [self._ip_backoff(session, ip, now)]
        if not known_device:
            waits.append(self._account_lock(session, email.lower(), now))
        return max(waits)

    def _ip_backoff(self, session: Session, ip: str, now: datetime) -> int:
        recent = (LoginFailure.ip == ip, LoginFailure.at > now - self.ip_window)
        count = session.scalar(select(func.count()).where(*recent)) or 0
        if count < self.free_per_ip:
            return 0
        last = _aware(session.scalar(select(func.max(LoginFailure.at)).where(*recent)))
        if last is None:
            return 0
        delay = min(self.backoff_base_s * 2 ** (count - self.free_per_ip), self.backoff_max_s)
        return max(0, math.ceil((last + timedelta(seconds=delay) - now).total_seconds()))

    def _account_lock(self, session: Session, email: str, now: datetime) -> int:
        since = now - self.window
        recent = (LoginFailure.email == email, LoginFailure.at > since)
        count = session.scalar(select(func.count()).where(*recent)) or 0
        if count < self.per_email:
            return 0
        # The lock lifts when the oldest of the last per_email failures leaves the window.
        nth = _aware(
            session.scalar(
                select(LoginFailure.at).where(*recent).order_by(LoginFailure.at.desc())
                .offset(self.per_email - 1).limit(1)
            )
        )
        if nth is None:
            return 0
        return max(0, math.ceil((nth + self.window - now).total_seconds()))

    def record_failure(
        self, session: Session, email: str, ip: str, now: datetime | None = None
    ) -> None:
        now = now or datetime.now(UTC)
        session.add(LoginFailure(email=email.lower(), ip=ip, at=now))
        keep = max(self.window, self.ip_window) * 2
        session.execute(delete(LoginFailure).where(LoginFailure.at < now - keep))

    def clear(self, session: Session, email: str, ip: str) -> None:
        """Forget the failures this address made for this account (after it logged in).

        Other addresses' failures stay: an owner logging in does not hand an
        attacker elsewhere a fresh budget."""
        session.execute(
            delete(LoginFailure).where(LoginFailure.email == email.lower(), LoginFailure.ip == ip)
        )


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; every stored time is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
