"""Counting deliveries of one message, to stop poison messages.

With late acks and reject-on-worker-lost, a message whose task kills its
worker (a decoder crash, the OOM killer) goes back to the queue and would
kill the next worker too, forever. Each delivery of (task id, retry number)
is counted where every worker sees it: in Redis beside the queues, or in a
folder under DATA_DIR/broker for the embedded broker. The task base class
dead-letters a message once its count passes ``workers.max_deliveries``,
and forgets the count when the task finishes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

__all__ = ["DeliveryCounter", "FolderDeliveryCounter", "RedisDeliveryCounter", "delivery_counter"]

# A count outlives a lost worker by a day; then it no longer matters.
TTL_S = 24 * 3600


class DeliveryCounter(Protocol):
    def incr(self, key: str) -> int:
        """Count one more delivery of ``key``; return the count including this one."""

    def forget(self, key: str) -> None: ...


class RedisDeliveryCounter:
    def __init__(self, url: str) -> None:
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def incr(self, key: str) -> int:
        k = f"artwatch:deliveries:{key}"
        pipe = self._r.pipeline()
        pipe.incr(k)
        pipe.expire(k, TTL_S)
        n, _ = pipe.execute()
        return int(n)

    def forget(self, key: str) -> None:
        self._r.delete(f"artwatch:deliveries:{key}")


class FolderDeliveryCounter:
    """One file per key; each delivery appends one byte (O_APPEND is atomic)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / "".join(c if c.isalnum() or c in "-_" else "_" for c in key)

    def incr(self, key: str) -> int:
        fd = os.open(self._path(key), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def forget(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


_lock = threading.Lock()
_counter: tuple[int, DeliveryCounter] | None = None


def delivery_counter(settings: Any) -> DeliveryCounter:
    """This process's counter for the configured broker."""
    global _counter
    with _lock:
        if _counter is None or _counter[0] != os.getpid():
            c: DeliveryCounter
            if settings.embedded_broker:
                c = FolderDeliveryCounter(settings.broker_dir() / "deliveries")
            else:
                c = RedisDeliveryCounter(settings.broker_url)
            _counter = (os.getpid(), c)
        return _counter[1]
