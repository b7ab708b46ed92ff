"""Passwords, API tokens, sessions, CSRF tokens, signed links and login throttling.

Secrets at rest are never stored in the clear: passwords as argon2id hashes,
API tokens and session keys as SHA-256 digests (they are 256-bit random
values, so a fast hash is enough and lookups stay indexed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from config.settings import ConfigError, Settings
from storage.models import Account, LoginFailure, WebSession

__all__ = [
    "TOKEN_PREFIX",
    "LoginThrottle",
    "Signer",
    "account_for_token",
    "end_session",
    "hash_password",
    "issue_api_token",
    "new_session",
    "resolve_secret_key",
    "session_account",
    "token_digest",
    "verify_password",
]

TOKEN_PREFIX = "aw_"
SESSION_DAYS = 14

# Parameters near argon2-cffi's RFC 9106 "low memory" profile, cheap enough for
# tests and a small server; the hash string records them, so raising them later
# still verifies old hashes.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# A hash to compare against when the account does not exist, so a missing
# account costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash("artwatch-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


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


def resolve_secret_key(settings: Settings) -> str:
    """settings.web.secret_key, or a random key kept in DATA_DIR (embedded use only).

    The key signs CSRF tokens and the unsubscribe links in alert emails, so the
    web server and the workers that send alerts must see the same key.
    """
    if settings.web.secret_key:
        return settings.web.secret_key
    if not settings.embedded_broker:
        raise ConfigError(
            "set web.secret_key (ARTWATCH_WEB__SECRET_KEY): the web server and the workers "
            "that send alert emails must share it, so a per-machine random key cannot be used"
        )
    path = Path(settings.data_dir) / "web_secret_key"
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: when two processes race, the loser reads the winner's key.
    try:
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(key)
        path.chmod(0o600)
        return key
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()


class Signer:
    """Signed, expiring tokens for CSRF and for links that work without logging in."""

    def __init__(self, secret_key: str) -> None:
        self._csrf = URLSafeTimedSerializer(secret_key, salt="artwatch.csrf")
        self._unsub = URLSafeTimedSerializer(secret_key, salt="artwatch.unsubscribe")

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
    """Refuse logins after too many recent failures for one email or one client address.

    Failures live in the database so every web process shares the count.
    """

    per_email: int = 5
    per_ip: int = 20
    window: timedelta = timedelta(minutes=15)

    def retry_after(
        self, session: Session, email: str, ip: str, now: datetime | None = None
    ) -> int:
        """Seconds until a login may be tried again; 0 when allowed now."""
        now = now or datetime.now(UTC)
        since = now - self.window
        waits = []
        for column, value, limit in (
            (LoginFailure.email, email.lower(), self.per_email),
            (LoginFailure.ip, ip, self.per_ip),
        ):
            count = (
                session.scalar(select(func.count()).where(column == value, LoginFailure.at > since))
                or 0
            )
            if count >= limit:
                oldest = session.scalar(
                    select(LoginFailure.at)
                    .where(column == value, LoginFailure.at > since)
                    .order_by(LoginFailure.at.desc())
                    .offset(limit - 1)
                    .limit(1)
                )
                if oldest is not None:
                    oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
                    waits.append(int((oldest + self.window - now).total_seconds()) + 1)
        return max(waits, default=0)

    def record_failure(
        self, session: Session, email: str, ip: str, now: datetime | None = None
    ) -> None:
        now = now or datetime.now(UTC)
        session.add(LoginFailure(email=email.lower(), ip=ip, at=now))
        session.execute(delete(LoginFailure).where(LoginFailure.at < now - self.window * 4))

    def clear(self, session: Session, email: str) -> None:
        session.execute(delete(LoginFailure).where(LoginFailure.email == email.lower()))
