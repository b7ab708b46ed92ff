"""The key that signs CSRF tokens and the unsubscribe links in alert emails.

Read by the web app (``webapp.security``) and by the workers that send alerts
(``notices.alerts``), which must agree on it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from config.settings import ConfigError, Settings

__all__ = ["UNSUBSCRIBE_SALT", "resolve_secret_key"]

#: The salt of the signed ``/unsubscribe/<token>`` links (``webapp.security.Signer``, ``notices.alerts``).
UNSUBSCRIBE_SALT = "artwatch.unsubscribe"


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
