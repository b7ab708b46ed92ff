"""Broker checks for start-up and ``artwatch status``.

Redis answers real questions (queue lengths, worker pings). The embedded
folder broker has no server to ask, so queue depth is the number of message
files per queue, and workers leave heartbeat files under DATA_DIR/broker.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config.settings import Settings
from workers.app import QUEUES

__all__ = [
    "BrokerUnavailable", "check_broker", "in_flight", "live_consumers", "queue_depths", "start_heartbeat",
    "worker_liveness",
]

HEARTBEAT_EVERY_S = 5.0


class BrokerUnavailable(Exception):
    """The Celery broker cannot be reached; the message names it."""


def _redact(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def check_broker(app: Any, settings: Settings) -> None:
    if settings.embedded_broker:
        return
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - kombu raises OperationalError with the socket error inside
        raise BrokerUnavailable(f"cannot reach the broker at {_redact(settings.broker_url)}: {exc}") from None


def queue_depths(app: Any, settings: Settings) -> dict[str, int | None]:
    if settings.embedded_broker:
        folder = settings.broker_dir() / "queue"
        counts = {q: 0 for q in QUEUES}
        if folder.exists():
            for entry in folder.iterdir():
                # kombu names message files "<timestamp>_<uuid>.<queue>.msg"
                parts = entry.name.split(".")
                if len(parts) >= 3 and parts[-1] == "msg" and parts[-2] in counts:
                    counts[parts[-2]] += 1
        return dict(counts)
    out: dict[str, int | None] = {}
    try:
        with app.connection_for_read() as conn:
            client = conn.channel().client
            for q in QUEUES:
                out[q] = int(client.llen(q))
    except Exception:  # noqa: BLE001 - status reports "?" rather than failing
        return {q: None for q in QUEUES}
    return out


def in_flight(app: Any, settings: Settings) -> int | None:
    """Messages delivered to workers and not yet acknowledged (Redis only:
    kombu keeps them in the ``unacked`` hash until the task finishes, and
    re-delivers them after the visibility timeout if their worker died)."""
    if settings.embedded_broker:
        return None
    try:
        with app.connection_for_read() as conn:
            return int(conn.channel().client.hlen("unacked"))
    except Exception:  # noqa: BLE001 - status reports "?" rather than failing
        return None


def _heartbeat_dir(settings: Settings) -> Path:
    return settings.broker_dir() / "workers"


def start_heartbeat(settings: Settings, name: str, queues: Sequence[str] = ()) -> threading.Event:
    """Embedded broker only: write DATA_DIR/broker/workers/NAME every few
    seconds, naming the queues the worker consumes."""
    stop = threading.Event()
    folder = _heartbeat_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = folder / f".{name}.tmp"

    def beat() -> None:
        while not stop.is_set():
            # Replaced atomically: a reader never sees a half-written beat.
            tmp.write_text(json.dumps({"pid": os.getpid(), "at": time.time(), "queues": list(queues)}))
            os.replace(tmp, path)
            stop.wait(HEARTBEAT_EVERY_S)
        path.unlink(missing_ok=True)

    threading.Thread(target=beat, name="artwatch-heartbeat", daemon=True).start()
    return stop


def _live_beats(settings: Settings) -> dict[str, Any]:
    """Embedded broker: the fresh heartbeats, by worker name."""
    alive: dict[str, Any] = {}
    folder = _heartbeat_dir(settings)
    if folder.exists():
        for f in folder.iterdir():
            if f.name.startswith("."):
                continue
            try:
                beat = json.loads(f.read_text())
                if time.time() - beat["at"] < 3 * HEARTBEAT_EVERY_S:
                    alive[f.name] = beat
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return alive


def live_consumers(settings: Settings, queue: str) -> list[str]:
    """Embedded broker: the live workers that consume ``queue`` (from their heartbeats)."""
    return sorted(name for name, beat in _live_beats(settings).items() if queue in beat.get("queues", ()))


def worker_liveness(app: Any, settings: Settings) -> list[str]:
    if settings.embedded_broker:
        return sorted(_live_beats(settings))
    try:
        replies = app.control.ping(timeout=1.0)
    except Exception:  # noqa: BLE001 - no reply from the broker means no live workers
        return []
    return sorted(name for reply in replies for name in reply)


def default_worker_name() -> str:
    return f"artwatch-{os.getpid()}@{socket.gethostname()}"
