"""Maintenance off the request path: where due retrains and snapshots go.

A registration that crosses a doubling of the registry makes a vocabulary
retrain due (minutes at thousands of works), and a process that has applied
enough changes makes a postings snapshot due (seconds to tens of seconds).
Neither belongs inside a web request or a query. :func:`maintenance_hook` is
the :data:`matching.replica.MaintenanceHook` that services (the web app, the
workers, the CLI) give the engine: it queues ``artwatch.retrain_vocabulary`` or
``artwatch.write_snapshot`` on the ``maintenance`` queue, which CPU workers
consume, and returns at once. The work registered meanwhile is searchable on
the current vocabulary, as it always was between retrains.

One at a time, cluster-wide:

- a burst of registrations queues one task per job, not one per registration:
  a pending flag is set when a task is queued and cleared when it starts
  (``SET NX`` with an expiry on the Redis broker; a file created exclusively
  under ``DATA_DIR/broker/maintenance`` on the folder broker), so changes that
  arrive while a retrain runs queue exactly one more;
- the task holds one lock while it runs (:func:`cluster_lock`): a Redis lock
  with a lease renewed while it is held (a SIGKILLed holder's lease runs out
  within :data:`LEASE_S`), on top of the index's own ``retrain.lock`` /
  ``snapshot.lock`` file locks. On the folder broker the file locks are
  cluster-wide already: that cluster is one machine. A second task waits for
  the lock, then finds the job no longer due and does nothing.

Where no worker will take the task (``workers.maintenance = "auto"`` with the
folder broker and no live worker consuming ``maintenance``, or ``"inline"``),
the hook declines and the index runs the job in the calling process, as
before; ``artwatch works import`` instead defers it to one retrain at the end
of the import (:class:`DeferredMaintenance`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.settings import Settings

if TYPE_CHECKING:
    from matching.replica import MaintenanceJob

__all__ = [
    "LEASE_S",
    "QUEUE",
    "DeferredMaintenance",
    "QueuedMaintenance",
    "clear_pending",
    "cluster_lock",
    "maintenance_hook",
    "queues_maintenance",
]

log = logging.getLogger(__name__)

QUEUE = "maintenance"
#: Task name per job.
TASKS: dict[str, str] = {"retrain": "artwatch.retrain_vocabulary", "snapshot": "artwatch.write_snapshot"}
#: A pending flag older than this no longer stops a new task from being queued
#: (its message was lost, or the queue was purged): a spare task is a no-op.
PENDING_TTL_S = 3600
#: The Redis lock's lease; renewed every third of it while the task runs.
LEASE_S = 60
#: How long a maintenance task waits for another one to finish.
LOCK_WAIT_S = 3 * 3600
_LOCK_KEY = "artwatch:maintenance:lock"


def _pending_key(job: str) -> str:
    return f"artwatch:maintenance:{job}:pending"


def _redis(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)


def _pending_path(settings: Settings, job: str) -> Path:
    return settings.broker_dir() / "maintenance" / f"{job}.pending"


def mark_pending(settings: Settings, job: str) -> bool:
    """Set ``job``'s pending flag; False when it was set already (a task is queued)."""
    if not settings.embedded_broker:
        return bool(_redis(settings).set(_pending_key(job), str(time.time()), nx=True, ex=PENDING_TTL_S))
    path = _pending_path(settings, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if time.time() - path.stat().st_mtime > PENDING_TTL_S:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def clear_pending(settings: Settings, job: str) -> None:
    """Called when a task starts: changes from now on queue another one."""
    if not settings.embedded_broker:
        _redis(settings).delete(_pending_key(job))
    else:
        _pending_path(settings, job).unlink(missing_ok=True)


def queues_maintenance(settings: Settings) -> bool:
    """Whether due maintenance goes to the queue (see ``workers.maintenance`` in
    defaults.toml). With Redis a worker is assumed: the message waits in the
    queue until a CPU worker takes it. The folder broker is one machine's: a
    worker heartbeat that lists the queue must be fresh."""
    mode = settings.workers.maintenance
    if mode != "auto":
        return mode == "queue"
    if not settings.embedded_broker:
        return True
    from workers.broker import live_consumers

    return bool(live_consumers(settings, QUEUE))


@dataclass
class QueuedMaintenance:
    """Queues due maintenance (once per job until a task starts); declines,
    so the index runs it here, when no worker would take it."""

    settings: Settings

    def __call__(self, job: MaintenanceJob) -> bool:
        if not queues_maintenance(self.settings):
            return False
        if mark_pending(self.settings, job):
            from workers.app import app, configure

            if app.conf.get("artwatch_settings") is not self.settings:
                configure(self.settings)
            app.send_task(TASKS[job])
            log.info("maintenance: queued %s", TASKS[job])
        return True


@dataclass
class DeferredMaintenance:
    """Takes every due job and only remembers it: a batch (``works import``)
    runs the maintenance once at its end instead of per work."""

    jobs: set[str] = field(default_factory=set)

    def __call__(self, job: MaintenanceJob) -> bool:
        self.jobs.add(job)
        return True


def maintenance_hook(settings: Settings) -> QueuedMaintenance:
    """The hook a service's engine gets (``build_engine(settings, maintenance=...)``)."""
    return QueuedMaintenance(settings)


@contextmanager
def cluster_lock(settings: Settings) -> Iterator[None]:
    """Held while a maintenance task runs: one at a time across every machine.

    The folder broker's cluster is one machine, where the index's file locks
    already serialise retrains and snapshot writes: nothing more is taken.
    """
    if settings.embedded_broker:
        yield
        return
    lock = _redis(settings).lock(_LOCK_KEY, timeout=LEASE_S, blocking_timeout=LOCK_WAIT_S, thread_local=False)
    if not lock.acquire():
        raise TimeoutError(f"another maintenance task held {_LOCK_KEY} for {LOCK_WAIT_S} s")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 3):
            try:
                lock.reacquire()
            except Exception as exc:  # noqa: BLE001 - Redis blinked: the next renewal may work
                log.warning("maintenance: cannot renew the lock: %s", exc)

    renewer = threading.Thread(target=renew, name="artwatch-maintenance-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            lock.release()
        except Exception as exc:  # noqa: BLE001 - it expires on its own within LEASE_S
            log.warning("maintenance: cannot release the lock: %s", exc)
