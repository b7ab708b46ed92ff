"""Issue 15, point 6: per-host limits hold across worker processes through Redis.

Two real crawling processes (``tests.crawler.polite_worker``: settings from the
environment, ``host_limits`` as a worker builds them, three threads each with
a client of their own) fetch from one HTTP server on 127.0.0.1, which records
when each request arrives and how many are in flight. With the limits in
Redis the two together keep to the configured rate and concurrency; with
per-process limits (``crawler.politeness_url = "local"``) each keeps to it
alone and together they take twice as much, which is why Redis is needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings

from .servers import PayloadServer, concurrency_route

ROOT = Path(__file__).resolve().parents[2]
RATE = 20.0
THREADS = 3
PER_THREAD = 10  # 2 processes x 3 threads x 10 = 60 requests: 3 s at 20 requests/s


def _crawl(http: PayloadServer, prefix: str, env: dict[str, str], requests: int = PER_THREAD) -> list[str]:
    """Start two crawling processes, let both go at once, wait for them; their `ready` lines."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **{f"ARTWATCH_{k}": v for k, v in env.items()}}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.crawler.polite_worker", http.url + "/p", prefix, str(THREADS),
             str(requests), name],
            cwd=ROOT, env=full_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("one", "two")
    ]
    ready: list[str] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            ready.append(proc.stdout.readline().strip())
        for proc in procs:  # both are loaded and waiting: start them together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return ready


def _rate(http: PayloadServer) -> float:
    times = sorted(r.at for r in http.hits("/p"))
    return (len(times) - 1) / (times[-1] - times[0])


def _overlap(http: PayloadServer) -> None:
    """Both processes were crawling in the middle half of the run (they ran together)."""
    hits = sorted(http.hits("/p"), key=lambda r: r.at)
    middle = hits[len(hits) // 4 : 3 * len(hits) // 4]
    assert {r.query["w"] for r in middle} == {"one", "two"}


def _rate_env(politeness_url: str) -> dict[str, str]:
    return {
        "CRAWLER__POLITENESS_URL": politeness_url,
        "CRAWLER__REQUESTS_PER_SECOND": str(RATE),
        "CRAWLER__MAX_CONCURRENCY_PER_HOST": "8",
        "CRAWLER__OBEY_ROBOTS": "false",
    }


@pytest.mark.redis
@pytest.mark.slow
def test_two_processes_share_the_rate_through_redis(
    test_settings: Settings, http: PayloadServer, redis_server_url: str, redis_prefix: str
) -> None:
    http.static("/p", b"ok", "text/plain")
    ready = _crawl(http, redis_prefix, _rate_env(redis_server_url))
    assert ready == ["ready RedisHostLimits"] * 2
    assert len(http.hits("/p")) == 2 * THREADS * PER_THREAD
    _overlap(http)
    rate = _rate(http)
    assert RATE * 0.9 <= rate <= RATE * 1.1, f"{rate:.1f} requests/s against a limit of {RATE}"


@pytest.mark.slow
def test_two_processes_with_local_limits_take_twice_the_rate(test_settings: Settings, http: PayloadServer) -> None:
    """Without shared limits each process keeps the rate alone: the reason for Redis."""
    http.static("/p", b"ok", "text/plain")
    ready = _crawl(http, "unused:", _rate_env("local"))
    assert ready == ["ready InProcessHostLimits"] * 2
    _overlap(http)
    assert _rate(http) > RATE * 1.5


@pytest.mark.redis
@pytest.mark.slow
def test_two_processes_share_the_concurrency_limit_through_redis(
    test_settings: Settings, http: PayloadServer, redis_server_url: str, redis_prefix: str
) -> None:
    state = concurrency_route(http, "/p", 0.2)
    env = {
        "CRAWLER__POLITENESS_URL": redis_server_url,
        "CRAWLER__REQUESTS_PER_SECOND": "0",
        "CRAWLER__MAX_CONCURRENCY_PER_HOST": "2",
        "CRAWLER__OBEY_ROBOTS": "false",
    }
    _crawl(http, redis_prefix, env, requests=3)
    assert len(http.hits("/p")) == 2 * THREADS * 3
    _overlap(http)
    assert state["max"] == 2  # six threads in two processes, never more than two in flight
