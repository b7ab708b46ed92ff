"""The Celery application: queues, routes and reliability settings.

One module-level ``app`` holds the task registry; :func:`configure` applies a
:class:`config.Settings` to it at each entry point (CLI, worker, beat), so the
same code runs on the embedded folder broker and on Redis.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from kombu import Queue

from config.settings import Settings

__all__ = ["QUEUES", "app", "celery_config", "configure"]

# Queue per kind of work, so CPU crawlers, CPU analysis and GPU embedding can
# be scaled and prefetched independently.
QUEUES = ("crawl", "fetch", "analyse", "embed", "notify")

ROUTES = {
    "artwatch.crawl_source": {"queue": "crawl"},
    "artwatch.crawl_due_sources": {"queue": "crawl"},
    "artwatch.fetch_upload": {"queue": "fetch"},
    "artwatch.analyse_upload": {"queue": "analyse"},
    "artwatch.draft_notice": {"queue": "notify"},
    "artwatch.notify_owner": {"queue": "notify"},
    "artwatch.send_digests": {"queue": "notify"},
}

# The longest task (a crawl page or an analysis batch) finishes well inside
# this. Redis re-delivers an unacked message after the visibility timeout, so
# it must exceed the longest task or a slow task would run twice at once.
VISIBILITY_TIMEOUT_S = 3600

app = Celery("artwatch")


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        # JSON only: messages carry ids and small records, never pickles.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        # Ack after the task body has run, and give the message back if the
        # worker process dies mid-task: a killed worker loses nothing. Safe
        # because every task is idempotent (upserts keyed by natural ids).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: tasks are long compared to the
        # round trip, and prefetching more would strand work on a dead worker.
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "analyse",
        "task_routes": ROUTES,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "crawl-due-sources": {"task": "artwatch.crawl_due_sources", "schedule": timedelta(seconds=60)},
            "send-digests": {"task": "artwatch.send_digests", "schedule": timedelta(hours=1)},
        },
        "timezone": "UTC",
    }
    if settings.embedded_broker:
        folder = settings.broker_dir()
        for sub in ("queue", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_url"] = "filesystem://"
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
        conf["beat_schedule_filename"] = str(folder / "beat-schedule")
    else:
        conf["broker_url"] = settings.broker_url
        conf["broker_transport_options"] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return conf


def configure(settings: Settings) -> Celery:
    app.conf.update(celery_config(settings))
    app.conf.artwatch_settings = settings
    return app
