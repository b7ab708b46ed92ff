"""Per-host crawl limits that every client sharing one store obeys together.

:class:`HostLimits` is what :class:`crawler.politeness.PoliteTransport` asks
before it contacts a host: when the next request may start (one request start
per interval, the interval being the rate limit or Crawl-delay), whether a
connection slot is free (``max_concurrency_per_host``), and whether the host
told us to stay away (a long Retry-After). Two implementations:

- :class:`InProcessHostLimits`, the embedded default: locks and a slot table in
  this process. Limits hold across the threads and clients of one process, so
  it is right when one process crawls (``artwatch run``, one worker).
- :class:`RedisHostLimits`, for several worker processes or machines: the same
  state as Redis keys, changed only by Lua scripts (atomic, and timed by the
  Redis server's clock, so machines whose clocks disagree still share one
  schedule). Chosen by configuration, see :func:`host_limits`.

A connection slot is a *lease*: it expires ``lease`` seconds after it was
taken or last renewed (the transport renews it while a body streams). A process
that dies holding slots, or a response nobody closed, frees them within one
lease instead of stalling the host for good.

robots.txt stays per process (:class:`crawler.politeness.PolitenessState`):
each process fetches it once a day per origin, which no site notices, and
checking it needs no round trip to Redis on every request.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from crawler.errors import PolitenessUnavailable

if TYPE_CHECKING:
    from config.settings import CrawlerSettings, Settings

__all__ = [
    "DEFAULT_PREFIX",
    "HostLimits",
    "InProcessHostLimits",
    "Lease",
    "RedisHostLimits",
    "default_lease",
    "host_limits",
    "reset_host_limits",
]

log = logging.getLogger("crawler.limits")

DEFAULT_PREFIX = "artwatch:polite:"


def default_lease(settings: CrawlerSettings) -> float:
    """How long a connection slot lives without renewal: longer than connecting
    plus waiting for the headers (no renewal can happen then), and at least 30 s."""
    return max(30.0, 2 * (settings.connect_timeout + settings.read_timeout))


class Lease(ABC):
    """One held connection slot of one host."""

    @abstractmethod
    def renew(self) -> None:
        """Push the slot's expiry one lease ahead (a body is still streaming)."""

    @abstractmethod
    def release(self) -> None:
        """Give the slot back; releasing twice, or after expiry, does nothing."""


class HostLimits(ABC):
    """Request pacing, connection slots and back-off per host, shared by all its users.

    Every time is relative ("seconds from now") so that callers never compare
    their clock with the store's."""

    def __init__(self, lease: float) -> None:
        self.lease = lease

    @abstractmethod
    def reserve(self, host: str, interval: float) -> float:
        """Claim the host's next request start and return the seconds to wait for it.

        Starts are ``interval`` apart: the claim is at the later of now and the
        previous claim plus its interval. The caller must wait that long before
        it sends."""

    @abstractmethod
    def hold_off(self, host: str, seconds: float) -> None:
        """No request to the host starts within ``seconds`` from now (429/503 back-off)."""

    @abstractmethod
    def block(self, host: str, seconds: float) -> None:
        """Refuse requests to the host for ``seconds`` (a Retry-After too long to sleep)."""

    @abstractmethod
    def blocked_for(self, host: str) -> float:
        """Seconds the host is still blocked for (0 when it is not)."""

    @abstractmethod
    def acquire(self, host: str, limit: int, timeout: float) -> Lease | None:
        """A connection slot of the host, out of ``limit``, waiting up to ``timeout``
        seconds for one to be released or expire; None if none came free."""


# -- in-process -------------------------------------------------------------------


@dataclass
class _Host:
    lock: threading.Lock
    freed: threading.Condition  # notified when a slot is released, on ``lock``
    slots: dict[int, float] = field(default_factory=dict)  # token -> expiry
    next_start: float = 0.0
    blocked_until: float = 0.0  # a Retry-After too long to sleep through


class _LocalLease(Lease):
    def __init__(self, limits: InProcessHostLimits, host: _Host, token: int) -> None:
        self._limits = limits
        self._host = host
        self._token = token

    def renew(self) -> None:
        with self._host.lock:
            if self._token in self._host.slots:
                self._host.slots[self._token] = self._limits._clock() + self._limits.lease

    def release(self) -> None:
        with self._host.lock:
            if self._host.slots.pop(self._token, None) is not None:
                self._host.freed.notify()


class InProcessHostLimits(HostLimits):
    """The limits of one process: locks, a schedule and a slot table per host."""

    def __init__(self, lease: float = 30.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(lease)
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}
        self._tokens = itertools.count(1)

    def _host(self, host: str) -> _Host:
        with self._lock:
            h = self._hosts.get(host)
            if h is None:
                lock = threading.Lock()
                h = self._hosts[host] = _Host(lock, threading.Condition(lock))
            return h

    def reserve(self, host: str, interval: float) -> float:
        h = self._host(host)
        with h.lock:
            now = self._clock()
            start = max(now, h.next_start)
            h.next_start = start + interval
        return start - now

    def hold_off(self, host: str, seconds: float) -> None:
        h = self._host(host)
        with h.lock:
            h.next_start = max(h.next_start, self._clock() + seconds)

    def block(self, host: str, seconds: float) -> None:
        h = self._host(host)
        with h.lock:
            h.blocked_until = max(h.blocked_until, self._clock() + seconds)

    def blocked_for(self, host: str) -> float:
        h = self._host(host)
        with h.lock:
            return max(0.0, h.blocked_until - self._clock())

    def acquire(self, host: str, limit: int, timeout: float) -> Lease | None:
        h = self._host(host)
        deadline = time.monotonic() + timeout
        with h.lock:
            while True:
                now = self._clock()
                for token, expiry in list(h.slots.items()):
                    if expiry <= now:
                        del h.slots[token]
                if len(h.slots) < max(1, limit):
                    token = next(self._tokens)
                    h.slots[token] = now + self.lease
                    return _LocalLease(self, h, token)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                # Woken by a release; otherwise look again when the oldest lease may have run out.
                soonest = min(h.slots.values()) - now
                h.freed.wait(min(left, max(0.01, soonest)))


# -- Redis --------------------------------------------------------------------------

# Times are microseconds of the Redis server's clock (exact in a Lua double).
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2] "

_RESERVE = _NOW + """
local start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local after = start + tonumber(ARGV[1])
if after > now then
  redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil((after - now) / 1000) + 1)
end
return start - now
"""

_HOLD_OFF = _NOW + """
local after = now + tonumber(ARGV[1])
if after > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1)
end
return 0
"""

_BLOCK = """
local ms = tonumber(ARGV[1])
if ms > redis.call('PTTL', KEYS[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 0
"""

_ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local lease = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
  return 1
end
return 0
"""

_RENEW = _NOW + """
local lease = tonumber(ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
end
return 0
"""


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _RedisLease(Lease):
    def __init__(self, limits: RedisHostLimits, key: str, token: str) -> None:
        self._limits = limits
        self._key = key
        self._token = token

    def renew(self) -> None:
        self._limits._run("renew", self._key, [self._limits._us(self._limits.lease), self._token], strict=False)

    def release(self) -> None:
        self._limits._call("release", lambda: self._limits.redis.zrem(self._key, self._token), strict=False)


class RedisHostLimits(HostLimits):
    """Per-host limits in Redis, shared by every process that uses the same server and prefix.

    Keys (all under ``prefix``, all expiring on their own): ``next:<host>`` the
    next free start time, ``hold:<host>`` the block of a long Retry-After,
    ``slots:<host>`` a sorted set of slot tokens scored by lease expiry.

    Redis down: every call raises :class:`crawler.errors.PolitenessUnavailable` and no request
    is sent (a warning is logged once per outage). A fallback to a local limiter
    would need to know how many processes share the rate, which nothing here
    knows, and with Redis as the broker the workers cannot take tasks then
    anyway. Redis restarted with its keys lost: the schedule starts afresh (one
    request per host may start at once) and the slots of requests then in
    flight are no longer counted until they finish; renewing or releasing them
    is a no-op, never an error. Releasing or renewing while Redis is down is
    skipped (the lease expires by itself), so a download in progress is never
    broken by the store."""

    def __init__(
        self,
        client: Any,
        *,
        lease: float = 30.0,
        prefix: str = DEFAULT_PREFIX,
        url: str = "",
        poll: float = 0.01,
    ) -> None:
        super().__init__(lease)
        self.redis = client
        self.prefix = prefix
        self.url = _redacted(url) if url else repr(client)
        self._poll = poll
        self._scripts = {
            name: client.register_script(src)
            for name, src in (
                ("reserve", _RESERVE),
                ("hold_off", _HOLD_OFF),
                ("block", _BLOCK),
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
            )
        }
        self._down = False
        self._down_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, lease: float = 30.0, prefix: str = DEFAULT_PREFIX) -> RedisHostLimits:
        """Limits on the Redis server at ``url``; a dead server is noticed within two seconds."""
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
        return cls(client, lease=lease, prefix=prefix, url=url)

    @staticmethod
    def _us(seconds: float) -> int:
        return max(0, math.ceil(seconds * 1_000_000))

    def _call(self, what: str, fn: Callable[[], Any], *, strict: bool = True) -> Any:
        import redis

        try:
            result = fn()
        except redis.exceptions.RedisError as exc:
            with self._down_lock:
                first, self._down = not self._down, True
            if first:
                log.warning("politeness store %s unreachable (%s: %s); not crawling until it is back",
                            self.url, type(exc).__name__, exc)
            if not strict:
                return None
            raise PolitenessUnavailable(
                f"politeness store {self.url} unreachable during {what}: {type(exc).__name__}: {exc}"
            ) from None
        if self._down:
            with self._down_lock:
                back, self._down = self._down, False
            if back:
                log.info("politeness store %s reachable again", self.url)
        return result

    def _run(self, name: str, key: str, args: list[Any], *, strict: bool = True) -> Any:
        script = self._scripts[name]
        return self._call(name, lambda: script(keys=[key], args=args), strict=strict)

    def reserve(self, host: str, interval: float) -> float:
        waited = self._run("reserve", f"{self.prefix}next:{host}", [self._us(interval)])
        return int(waited) / 1_000_000

    def hold_off(self, host: str, seconds: float) -> None:
        self._run("hold_off", f"{self.prefix}next:{host}", [self._us(seconds)])

    def block(self, host: str, seconds: float) -> None:
        self._run("block", f"{self.prefix}hold:{host}", [max(1, math.ceil(seconds * 1000))])

    def blocked_for(self, host: str) -> float:
        ms = int(self._call("blocked_for", lambda: self.redis.pttl(f"{self.prefix}hold:{host}")))
        return ms / 1000 if ms > 0 else 0.0

    def acquire(self, host: str, limit: int, timeout: float) -> Lease | None:
        """Polls (10 ms, doubling to 100 ms) rather than blocking in Redis: a
        blocking pop would also have to notice leases that ran out."""
        key = f"{self.prefix}slots:{host}"
        token = f"{os.getpid()}:{uuid.uuid4().hex}"
        deadline = time.monotonic() + timeout
        pause = self._poll
        while True:
            if int(self._run("acquire", key, [max(1, limit), self._us(self.lease), token])):
                return _RedisLease(self, key, token)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.1)

    def close(self) -> None:
        self.redis.close()


# -- choosing one -----------------------------------------------------------------

class _Shared:
    """The process-wide Redis limits, by (URL, prefix, lease)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.limits: dict[tuple[str, str, float], HostLimits] = {}

    def start_afresh(self) -> None:
        self.lock = threading.Lock()
        self.limits = {}


_SHARED = _Shared()


def host_limits(settings: Settings, *, prefix: str = DEFAULT_PREFIX) -> HostLimits:
    """The process-wide limits the configuration asks for.

    Redis at :meth:`config.settings.Settings.resolved_politeness_url` when it
    names one (``crawler.politeness_url``, or the broker when that is Redis),
    otherwise the in-process limits that :func:`crawler.service.build_client`
    uses when it is given none. Built once per process (and again in a forked
    child)."""
    url = settings.resolved_politeness_url()
    if not url:
        from crawler.politeness import shared_state

        return shared_state(settings.crawler).limits
    lease = default_lease(settings.crawler)
    key = (url, prefix, lease)
    with _SHARED.lock:
        limits = _SHARED.limits.get(key)
        if limits is None:
            limits = _SHARED.limits[key] = RedisHostLimits.from_url(url, lease=lease, prefix=prefix)
        return limits


def reset_host_limits() -> None:
    """Forget the process-wide limits (tests, and every forked child)."""
    with _SHARED.lock:
        _SHARED.limits.clear()


def _after_fork_in_child() -> None:
    # A lock copied mid-use and a parent's Redis connections are unusable here.
    _SHARED.start_afresh()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
