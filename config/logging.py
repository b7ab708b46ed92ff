"""Logging setup: plain text for people, JSON lines for log collectors.

Records may carry ``upload_id``, ``work_id``, ``match_id`` or ``notice_id``
through ``extra=``; both formats include them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from config.settings import Settings

__all__ = ["setup_logging"]

_CONTEXT_KEYS = ("upload_id", "work_id", "match_id", "notice_id", "source_id", "task_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in _CONTEXT_KEYS if hasattr(record, k))
        return f"{base} [{ctx}]" if ctx else base


def setup_logging(settings: Settings, level: str | None = None, *, quiet: bool = False) -> None:
    """Send every record to stderr, formatted per ``settings.log_format``.

    ``level`` (``-v``) wins. Otherwise services (worker, beat, web) log at
    ``settings.log_level``, and ``quiet`` commands, whose answer is what they
    print, log warnings and worse only (or less, when ``log_level`` asks for
    less), so index maintenance reported at INFO does not bury the answer.
    Third-party loggers that report routine work at INFO (fontTools prints
    some 45 lines per PDF) are held at WARNING in every mode."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
    if quiet and level is None:
        root.setLevel(max(root.level, logging.WARNING))
    for noisy in ("httpx", "httpcore", "PIL", "urllib3", "alembic", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
