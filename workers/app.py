"""The Celery application: queues, routes and reliability settings.

One module-level ``app`` holds the task registry; :func:`configure` applies a
:class:`config.Settings` to it at each entry point (CLI, worker, beat), so the
same code runs on the embedded folder broker and on Redis.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from kombu.entity import Queue

from config.settings import ConfigError, Settings

__all__ = [
    "MAINTENANCE_TIME_LIMIT_S", "QUEUES", "RETRY_BACKOFF_MAX_S", "app", "celery_config", "configure",
    "worker_prefetch",
]

# Queue per kind of work, so crawlers, CPU analysis and GPU embedding can be
# scaled and prefetched independently (routes: [workers.routes] in config).
# "maintenance" takes the registry's retrains and snapshot writes
# (workers.maintenance), so no request or analysis waits behind them.
QUEUES = ("crawl", "fetch", "analyse", "embed", "notify", "maintenance")

# The longest task (a crawl page, an analysis, a GPU batch) finishes in well
# under a minute, and the longest retry countdown is RETRY_BACKOFF_MAX_S.
# Maintenance tasks are the exception (MAINTENANCE_TIME_LIMIT_S, their own
# limit): a retrain re-reads every work. One redelivered while it still runs
# waits for its cluster lock, then finds nothing due.
# Redis re-delivers an unacked message after the visibility timeout, and a
# retry waiting for its countdown is held unacked by a worker, so the timeout
# must exceed both or a slow task (or a scheduled retry) would run twice at
# once. [workers] visibility_timeout_s (default 3600) is checked against it.
RETRY_BACKOFF_MAX_S = 300
LONGEST_TASK_S = 600
MAINTENANCE_TIME_LIMIT_S = 4 * 3600

app = Celery("artwatch")


def worker_prefetch(settings: Settings, queues: list[str]) -> int:
    """Prefetch multiplier for a worker consuming ``queues``: the smallest
    configured value among them, so a long queue is never over-prefetched
    because it shares a worker with a short one."""
    values = [settings.workers.prefetch.get(q, 1) for q in queues]
    return max(1, min(values or [1]))


def celery_config(settings: Settings) -> dict[str, Any]:
    w = settings.workers
    unknown = sorted(set(w.routes.values()) - set(QUEUES))
    if unknown:
        raise ConfigError(f"workers.routes names unknown queues {unknown}; queues are {list(QUEUES)}")
    if w.visibility_timeout_s <= LONGEST_TASK_S + RETRY_BACKOFF_MAX_S and not settings.embedded_broker:
        # Allowed (the fault tests shorten it with short tasks), but loud.
        import logging

        logging.getLogger(__name__).warning(
            "workers.visibility_timeout_s=%s is below the longest task plus retry countdown (%s s): "
            "slow tasks may run twice", w.visibility_timeout_s, LONGEST_TASK_S + RETRY_BACKOFF_MAX_S)
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
        # The bound the visibility timeout relies on: a prefork child still
        # running after LONGEST_TASK_S is killed and the task dead-lettered
        # (TimeLimitExceeded). The threads pool (GPU) cannot enforce it; its
        # one blocking step, the wait for a batch, has its own 300 s timeout.
        "task_time_limit": LONGEST_TASK_S,
        # A message whose task raised for good is acked, not re-queued: the
        # task's on_failure has written it to the dead-letter table already.
        "task_acks_on_failure_or_timeout": True,
        # Default for clients (`artwatch crawl`); `artwatch worker` sets the
        # value for its queues from [workers.prefetch] (see worker_prefetch).
        "worker_prefetch_multiplier": 1,
        # A worker waits for the broker forever instead of exiting when Redis
        # restarts; publishers retry too, so a task queued during the outage
        # is sent once Redis is back rather than lost.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 30, "interval_start": 0.2,
                                      "interval_step": 0.5, "interval_max": 2.0},
        # Celery stops consuming while Redis is away; cancel the tasks it can
        # no longer ack so they are re-delivered, not half-acked.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": [Queue(name) for name in QUEUES],  # type: ignore[no-untyped-call]
        "task_default_queue": "analyse",
        "task_routes": dict(w.routes),
        # Task events feed Flower (Redis only: the folder broker has no
        # fanout for them to go to).
        "worker_send_task_events": not settings.embedded_broker,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "crawl-due-sources": {"task": "artwatch.crawl_due_sources", "schedule": timedelta(seconds=60)},
            "send-digests": {"task": "artwatch.send_digests", "schedule": timedelta(hours=1)},
            "notice-followups": {"task": "artwatch.run_followups", "schedule": timedelta(hours=6)},
            # Uploads whose message Redis lost (workers.stalled).
            "redispatch-stalled": {"task": "artwatch.redispatch_stalled", "schedule": timedelta(minutes=10)},
        },
        "timezone": "UTC",
    }
    if settings.embedded_broker:
        folder = settings.broker_dir()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        # The host is never used; naming it (as kombu would) keeps kombu from
        # warning "No hostname was supplied" on every publish.
        conf["broker_url"] = "filesystem://localhost//"
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            # kombu's default is "control" in the current directory.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        conf["beat_schedule_filename"] = str(folder / "beat-schedule")
    else:
        conf["broker_url"] = settings.broker_url
        conf["broker_transport_options"] = {
            "visibility_timeout": w.visibility_timeout_s,
            # Look for expired unacked messages every restore_interval_s
            # (kombu's default throttle would make it every 10 intervals).
            "unacked_restore_interval": w.restore_interval_s,
            "unacked_restore_throttle": 1,
            # Each sweep holds a Redis mutex; kombu lets a dead holder's mutex
            # lapse only after 300 s. A worker SIGKILLed mid-sweep would then
            # block every redelivery for five minutes, far beyond a short
            # visibility timeout. A sweep takes well under a second.
            "unacked_mutex_expire": max(30, min(300, w.visibility_timeout_s // 12)),
        }
    return conf


def configure(settings: Settings) -> Celery:
    conf = celery_config(settings)
    moved = (app.conf.get("broker_url") != conf["broker_url"]
             or app.conf.get("broker_transport_options") != conf.get("broker_transport_options"))
    if moved and app._pool is not None:
        # Reconfigured for another broker in the same process (tests, the
        # embedded run; two folder brokers differ only in their transport
        # options' folders): drop connections and producers bound to the old one.
        # kombu also caches producer pools per connection, process-wide.
        from kombu import pools

        app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None
        pools.reset()  # type: ignore[no-untyped-call]  # kombu is untyped
    app.conf.update(conf)
    app.conf.artwatch_settings = settings
    return app
