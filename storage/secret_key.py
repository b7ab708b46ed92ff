"""The key that signs CSRF tokens and the unsubscribe links in alert emails.

Read by the web app (``webapp.security``) and by the workers that send alerts
(``notices.alerts``), which must agree on it.
"""

from __future__ import annotations

import secrets

from config.settings import ConfigError, Settings
from storage.documents import SECRET_KEY, DocumentStore, build_document_store

__all__ = ["UNSUBSCRIBE_SALT", "resolve_secret_key"]

#: The salt of the signed ``/unsubscribe/<token>`` links (``webapp.security.Signer``, ``notices.alerts``).
UNSUBSCRIBE_SALT = "artwatch.unsubscribe"


def resolve_secret_key(settings: Settings, documents: DocumentStore | None = None) -> str:
    """settings.web.secret_key, or a random key kept as a shared document.

    The key signs CSRF tokens and the unsubscribe links in alert emails, so the
    web server and the workers that send alerts must see the same key. The
    generated key lives in ``documents`` (by default the store that
    ``settings.shared.kind`` names): ``DATA_DIR/web_secret_key`` (mode 0600),
    which only the processes of one machine share, so a non-embedded broker
    needs an explicit key; or, with ``shared.kind = "services"``, the database,
    which every process of every machine reaches.
    """
    if settings.web.secret_key:
        return settings.web.secret_key
    if settings.shared.kind == "folder" and not settings.embedded_broker:
        raise ConfigError(
            "set web.secret_key (ARTWATCH_WEB__SECRET_KEY) or shared.kind = \"services\": the web server "
            "and the workers that send alert emails must share it, so a per-machine random key cannot be used"
        )
    store = documents if documents is not None else build_document_store(settings)
    existing = store.get(SECRET_KEY)
    if existing is not None and existing.data.strip():
        return existing.data.decode("utf-8").strip()
    # When two processes race, the loser gets the winner's key.
    return store.put_if_absent(SECRET_KEY, secrets.token_urlsafe(48).encode("utf-8")).decode("utf-8").strip()
