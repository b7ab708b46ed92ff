"""Per-host limits: one contract for the in-process and the Redis implementation,
then what only the Redis one has to survive (a killed process, Redis down or
restarted) and how the configuration picks one.

``make()`` in the contract gives instances that share one store: for the
in-process limits that is the one instance of the process, for Redis a new
client on the same server and key prefix (another process, as far as the
limits can tell)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.settings import CrawlerSettings, Settings, load_settings
from crawler.errors import PolitenessUnavailable, RateLimited
from crawler.fetch import AddressPolicy, SafeTransport, fetch_page
from crawler.limits import (
    HostLimits,
    InProcessHostLimits,
    Lease,
    RedisHostLimits,
    host_limits,
)
from crawler.politeness import PoliteTransport, shared_state

from .servers import PayloadServer, Reply

Make = Callable[..., HostLimits]
HOST = "site.test"


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.redis)])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    made: list[RedisHostLimits] = []
    local: dict[float, InProcessHostLimits] = {}

    def in_process(lease: float = 30.0) -> HostLimits:
        return local.setdefault(lease, InProcessHostLimits(lease))

    def on_redis(lease: float = 30.0) -> HostLimits:
        url = str(request.getfixturevalue("redis_server_url"))
        limits = RedisHostLimits.from_url(url, lease=lease, prefix=str(request.getfixturevalue("redis_prefix")))
        made.append(limits)
        return limits

    yield in_process if request.param == "in-process" else on_redis
    for limits in made:
        limits.close()


def _timed(calls: Callable[[], list[float]]) -> tuple[list[float], float]:
    t0 = time.monotonic()
    out = calls()
    return out, time.monotonic() - t0


# -- the contract ------------------------------------------------------------------


def test_starts_are_one_interval_apart_across_sharers(make: Make) -> None:
    a, b = make(), make()
    waits, elapsed = _timed(lambda: [lim.reserve(HOST, 0.1) for lim in (a, b, a, b, a)])
    # Claim i starts 0.1 s * i after claim 0, which started at once.
    assert waits[0] <= 0.002
    for i, wait in enumerate(waits):
        assert i * 0.1 - elapsed <= wait <= i * 0.1 + 0.002
    assert make().reserve("other.test", 0.1) <= 0.002  # hosts are independent


def test_hold_off_delays_every_sharer(make: Make) -> None:
    a, b = make(), make()
    t0 = time.monotonic()
    a.hold_off(HOST, 0.5)
    wait = b.reserve(HOST, 0.0)
    elapsed = time.monotonic() - t0
    assert 0.5 - elapsed <= wait <= 0.502
    a.hold_off(HOST, 0.01)  # a shorter hold-off never shortens a longer one
    assert b.reserve(HOST, 0.0) > 0.3


def test_block_is_seen_by_every_sharer_and_never_shortened(make: Make) -> None:
    a, b = make(), make()
    assert b.blocked_for(HOST) == 0
    a.block(HOST, 5)
    assert 4 < b.blocked_for(HOST) <= 5
    b.block(HOST, 1)
    assert a.blocked_for(HOST) > 4
    assert a.blocked_for("other.test") == 0


def test_connection_slots_are_shared_and_handed_on(make: Make) -> None:
    a, b = make(), make()
    first, second = a.acquire(HOST, 2, 0), b.acquire(HOST, 2, 0)
    assert first is not None and second is not None
    assert a.acquire(HOST, 2, 0) is None and b.acquire(HOST, 2, 0.05) is None
    assert a.acquire("other.test", 2, 0) is not None
    got: list[Lease | None] = []
    waiter = threading.Thread(target=lambda: got.append(b.acquire(HOST, 2, 10)))
    waiter.start()
    first.release()
    waiter.join()
    assert got and got[0] is not None
    first.release()  # twice: nothing more is freed
    assert a.acquire(HOST, 2, 0) is None


def test_an_unreleased_slot_expires_after_its_lease(make: Make) -> None:
    a, b = make(lease=0.3), make(lease=0.3)
    held = a.acquire(HOST, 2, 0)  # its holder dies or forgets it: never released
    assert held is not None
    # The host stays busy meanwhile (its other slot taken and given back over
    # and over): the abandoned slot must still come free on its own.
    deadline = time.monotonic() + 10
    both: list[Lease] = []
    while len(both) < 2 and time.monotonic() < deadline:
        for lease in both:
            lease.release()
        both = [x for x in (b.acquire(HOST, 2, 0), b.acquire(HOST, 2, 0)) if x is not None]
        assert both, "the slot nobody held was never free"
        time.sleep(0.02)
    assert len(both) == 2  # the abandoned slot ran out
    held.release()  # too late: must not free a slot that `b` holds now
    assert a.acquire(HOST, 2, 0) is None


def test_renewing_keeps_a_slot_past_its_lease(make: Make) -> None:
    a, b = make(lease=1.0), make(lease=1.0)
    held = a.acquire(HOST, 1, 0)
    assert held is not None
    for _ in range(15):  # 1.5 s, renewed ten times a lease
        time.sleep(0.1)
        held.renew()
    assert b.acquire(HOST, 1, 0) is None
    held.release()
    assert b.acquire(HOST, 1, 0) is not None


class _Sleeps:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def _settings(**kw: Any) -> CrawlerSettings:
    base: dict[str, Any] = dict(allow_internal=["127.0.0.1"], requests_per_second=0, obey_robots=False)
    base.update(kw)
    return CrawlerSettings(**base)


def _client(limits: HostLimits, sleep: _Sleeps, settings: CrawlerSettings | None = None, **kw: Any) -> httpx.Client:
    """A client with a robots.txt cache of its own on ``limits``; sleeps are recorded, not slept."""
    settings = settings or _settings()
    inner = SafeTransport(AddressPolicy.from_list(settings.allow_internal))
    return httpx.Client(transport=PoliteTransport(inner, settings, limits=limits, sleep=sleep, rng=lambda: 0.0, **kw))


def test_retry_after_on_429_holds_back_every_sharer(make: Make, http: PayloadServer) -> None:
    replies = iter([Reply(429, {"Retry-After": "1"}), Reply(200, {}, b"ok"), Reply(200, {}, b"ok")])
    http.routes["/p"] = lambda p, q, h: next(replies)
    slept_a, slept_b = _Sleeps(), _Sleeps()
    t0 = time.monotonic()
    with _client(make(), slept_a) as a, _client(make(), slept_b) as b:
        assert fetch_page(a, http.url + "/p").body == b"ok"  # its sleep is recorded, not slept
        assert fetch_page(b, http.url + "/p").body == b"ok"
    elapsed = time.monotonic() - t0
    assert len(http.hits("/p")) == 3
    assert len(slept_a.sleeps) == 1 and 1.0 - elapsed <= slept_a.sleeps[0] <= 1.01  # never earlier than asked
    assert len(slept_b.sleeps) == 1 and 1.0 - elapsed <= slept_b.sleeps[0] <= 1.01  # the other client waits too


def test_long_retry_after_blocks_the_host_for_every_sharer(make: Make, http: PayloadServer) -> None:
    http.routes["/p"] = lambda p, q, h: Reply(429, {"Retry-After": "3600"})
    with _client(make(), _Sleeps(), max_backoff=60) as a, pytest.raises(RateLimited):
        fetch_page(a, http.url + "/p")
    with _client(make(), _Sleeps()) as b, pytest.raises(RateLimited, match="asked us to wait") as info:
        fetch_page(b, http.url + "/p")
    assert len(http.hits("/p")) == 1  # the second client never contacted the host
    assert info.value.retry_after is not None and info.value.retry_after > 3500


# -- Redis only --------------------------------------------------------------------

_HOLDER = """
import sys, time
from crawler.limits import RedisHostLimits
limits = RedisHostLimits.from_url(sys.argv[1], lease=float(sys.argv[3]), prefix=sys.argv[2])
assert limits.acquire("site.test", 1, 0) is not None
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.redis
def test_a_killed_process_frees_its_slot_after_the_lease(redis_server_url: str, redis_prefix: str) -> None:
    lease = 2.0
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_server_url, redis_prefix, str(lease)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        mine = RedisHostLimits.from_url(redis_server_url, lease=lease, prefix=redis_prefix)
        assert mine.acquire(HOST, 1, 0) is None  # the dead process's lease still runs
        assert mine.acquire(HOST, 1, 15) is not None
        mine.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_down_fails_closed_and_logs_once(http: PayloadServer, caplog: pytest.LogCaptureFixture) -> None:
    """No Redis listens: no request reaches the host, the error says why, and
    the outage is logged once however many requests try."""
    http.static("/p", b"ok", "text/plain")
    limits = RedisHostLimits.from_url(f"redis://:secret@127.0.0.1:{_free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="crawler.limits"), _client(limits, _Sleeps()) as client:
        for _ in range(3):
            with pytest.raises(PolitenessUnavailable, match=r"politeness store redis://:\*\*\*@127\.0\.0\.1") as info:
                fetch_page(client, http.url + "/p")
    assert isinstance(info.value, ConnectionError)  # Celery's autoretry retries the task
    assert "secret" not in str(info.value)
    assert http.hits("/p") == []
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    limits.close()


class _RedisServer:
    """A private redis-server that this test may kill and restart on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@pytest.mark.redis
def test_redis_restart_stops_crawling_then_resumes(
    tmp_path: Path, http: PayloadServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart loses every key (no persistence here): the client keeps its
    limits object, fails closed while Redis is gone, and carries on after,
    even with the slot of a response still open across the restart. A
    robots.txt that could not be fetched for want of Redis is not taken for
    an unreachable one (which would disallow the site for minutes)."""
    http.static("/p", b"ok", "text/plain")
    http.static("/robots.txt", b"User-agent: *\nAllow: /\n", "text/plain")
    server = _RedisServer(tmp_path)
    server.start()
    limits = RedisHostLimits.from_url(f"redis://127.0.0.1:{server.port}/0")
    try:
        with caplog.at_level(logging.INFO, logger="crawler.limits"), _client(limits, _Sleeps()) as client:
            assert fetch_page(client, http.url + "/p").body == b"ok"
            open_response = client.send(client.build_request("GET", http.url + "/p"), stream=True)
            server.stop()
            with pytest.raises(PolitenessUnavailable):
                fetch_page(client, http.url + "/p")
            with _client(limits, _Sleeps(), _settings(obey_robots=True)) as fresh:
                with pytest.raises(PolitenessUnavailable):
                    fetch_page(fresh, http.url + "/p")  # its robots.txt first: not fetched either
                server.start()
                open_response.close()  # its slot vanished with the restart: releasing it is no error
                assert fetch_page(client, http.url + "/p").body == b"ok"
                assert fetch_page(fresh, http.url + "/p").body == b"ok"
        assert len(http.hits("/p")) == 4 and len(http.hits("/robots.txt")) == 1
        messages = [r.getMessage() for r in caplog.records]
        assert any("unreachable" in m for m in messages) and any("reachable again" in m for m in messages)
    finally:
        limits.close()
        server.stop()


# -- configuration --------------------------------------------------------------------


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(f"ARTWATCH_{key}", value)
    return load_settings()


def test_configuration_picks_the_implementation(test_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = _load(monkeypatch)
    assert embedded.resolved_politeness_url() == ""
    local = host_limits(embedded)
    assert isinstance(local, InProcessHostLimits)
    assert local is shared_state(embedded.crawler).limits  # what build_client uses when given none

    broker = _load(monkeypatch, BROKER_URL="redis://127.0.0.1:6399/3")
    assert broker.resolved_politeness_url() == "redis://127.0.0.1:6399/3"
    shared = host_limits(broker)
    assert isinstance(shared, RedisHostLimits) and shared.url == "redis://127.0.0.1:6399/3"
    assert host_limits(broker) is shared  # one per process

    opted_out = _load(monkeypatch, CRAWLER__POLITENESS_URL="local")
    assert isinstance(host_limits(opted_out), InProcessHostLimits)

    own = _load(monkeypatch, CRAWLER__POLITENESS_URL="redis://127.0.0.1:6398/1")
    assert own.resolved_politeness_url() == "redis://127.0.0.1:6398/1"

    monkeypatch.delenv("ARTWATCH_BROKER_URL")
    monkeypatch.delenv("ARTWATCH_CRAWLER__POLITENESS_URL")
    assert _load(monkeypatch, BROKER_URL="filesystem://").resolved_politeness_url() == ""
    assert os.environ.get("ARTWATCH_CRAWLER__POLITENESS_URL") is None
