"""Prometheus metrics of the workers, served by each worker node.

``artwatch worker`` (with ``workers.metrics_port`` or ``--metrics-port``)
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder *before* this module is
imported, so every prefork child writes its samples to its own mmap file and
the exporter in the worker's main process sums them at scrape time
(prometheus_client's multiprocess mode). The threads and solo pools run in
one process and use the same path. Queue depths are read from the broker at
scrape time, so they are never stale.

Metric names:

- ``artwatch_queue_depth{queue}``: messages waiting per queue (gauge);
- ``artwatch_stage_seconds{stage}``: latency per stage (histogram): crawl,
  fetch, decode (embed-side decode and crop), embed_wait (one image's wait
  for its batch), embed_forward (one batch's forward pass), analyse (the
  matcher), database (everything else in a task: loads, upserts, commit);
- ``artwatch_embed_batch_size``: images per forward pass (histogram);
- ``artwatch_matches_total``: new matches recorded;
- ``artwatch_tasks_total{task,outcome}``: finished tasks (ok, retry, failed,
  dead_letter);
- ``artwatch_errors_total{kind}``: errors by kind (exception class name, or
  ``poison`` for a message dead-lettered after too many deliveries).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

__all__ = [
    "BATCH_SIZE",
    "ERRORS",
    "MATCHES",
    "STAGE_SECONDS",
    "TASKS",
    "observe_batch",
    "stage",
    "start_exporter",
]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

STAGE_SECONDS = Histogram("artwatch_stage_seconds", "Latency per pipeline stage", ["stage"], buckets=_BUCKETS)
BATCH_SIZE = Histogram("artwatch_embed_batch_size", "Images per GPU forward pass",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
MATCHES = Counter("artwatch_matches", "New matches recorded")
TASKS = Counter("artwatch_tasks", "Finished tasks by outcome", ["task", "outcome"])
ERRORS = Counter("artwatch_errors", "Errors by kind", ["kind"])


@contextmanager
def stage(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - t0)


def observe_batch(size: int, seconds: float) -> None:
    BATCH_SIZE.observe(size)
    STAGE_SECONDS.labels("embed_forward").observe(seconds)


class _QueueDepthCollector:
    def __init__(self, app: Any, settings: Any) -> None:
        self.app, self.settings = app, settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from workers.broker import queue_depths

        g = GaugeMetricFamily("artwatch_queue_depth", "Messages waiting per queue", labels=["queue"])
        for q, n in queue_depths(self.app, self.settings).items():
            if n is not None:
                g.add_metric([q], float(n))
        yield g


def start_exporter(app: Any, settings: Any, port: int, host: str = "0.0.0.0") -> Any:
    """Serve /metrics on ``port`` from this (the worker's main) process."""
    from prometheus_client import start_http_server, values

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        if values.ValueClass.__name__ == "MutexValue":  # the single-process class
            raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    registry.register(_QueueDepthCollector(app, settings))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
