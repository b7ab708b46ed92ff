"""Politeness: robots.txt, per-host rate and concurrency limits, backoff, conditional GET.

:class:`PoliteTransport` wraps the safe transport, so every request a crawler
client makes (pages, feeds, images, each redirect hop) goes through it:

- robots.txt is fetched once per origin (cached for a day; 4xx means "no
  rules", 5xx or unreachable means "disallow all" for a few minutes, as RFC
  9309 says) and obeyed for our user agent, ``Crawl-delay`` included. The
  matcher follows RFC 9309: longest match wins, ``Allow`` wins a tie, ``*`` and
  ``$`` wildcards (``urllib.robotparser`` does none of these).
- each host gets at most ``requests_per_second`` request starts (or one per
  Crawl-delay, whichever is slower) and ``max_concurrency_per_host`` requests
  in flight; a slot is held until the response body is closed. These limits
  live in a :class:`crawler.limits.HostLimits`: this process's, or Redis's,
  which every worker process and machine shares.
- 429 and 503 are retried after ``Retry-After`` (seconds or an HTTP date) or
  an exponential backoff, with full jitter, up to ``max_retries`` times; the
  wait also holds back every other request to that host. A wait longer than
  ``max_backoff`` is not slept: the response is returned (the caller reports
  RateLimited and retries on its next poll) and, until that time, requests to
  the host fail fast with RateLimited without contacting it.

Conditional GET is per resource and lives with the source's cursor (see
:func:`conditional_headers` / :func:`validators`), so a crash between fetch and
commit can never turn a 304 into a missed update.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from config.settings import CrawlerSettings
from crawler.errors import RateLimited, RobotsDisallowed, TransientFetchError
from crawler.fetch import user_agent
from crawler.limits import HostLimits, InProcessHostLimits, Lease, default_lease

__all__ = [
    "PoliteTransport",
    "PolitenessState",
    "RobotsRules",
    "conditional_headers",
    "parse_robots",
    "reset_shared_state",
    "shared_state",
    "validators",
]

ROBOTS_TTL = 24 * 3600.0
ROBOTS_ERROR_TTL = 300.0
ROBOTS_MAX_BYTES = 500_000  # RFC 9309 asks parsers to read at least 500 KiB


# -- robots.txt ---------------------------------------------------------------


def _pattern_regex(path: str) -> re.Pattern[str]:
    anchored = path.endswith("$")
    if anchored:
        path = path[:-1]
    body = ".*".join(re.escape(part) for part in path.split("*"))
    return re.compile(body + ("$" if anchored else ""))


@dataclass
class _Rule:
    allow: bool
    path: str
    regex: re.Pattern[str]


@dataclass
class RobotsRules:
    """The rules of one robots.txt group for one user agent."""

    rules: list[_Rule] = field(default_factory=list)
    crawl_delay: float | None = None
    sitemaps: list[str] = field(default_factory=list)
    disallow_all: bool = False

    def allowed(self, url: str) -> bool:
        if self.disallow_all:
            return False
        parts = urlsplit(url)
        target = _normalise_path(parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if target == "/robots.txt":
            return True
        best: _Rule | None = None
        for rule in self.rules:
            if not rule.path:
                continue
            if rule.regex.match(target) and (
                best is None
                or len(rule.path) > len(best.path)
                or (len(rule.path) == len(best.path) and rule.allow and not best.allow)
            ):
                best = rule
        return best is None or best.allow


def _normalise_path(path: str) -> str:
    # Compare percent-encoded forms consistently: decode, then re-encode only
    # what must be encoded.
    from urllib.parse import quote

    return quote(unquote(path), safe="/*$?=&;:@+,!~'()%-._")


def parse_robots(text: str, agent: str) -> RobotsRules:
    """The group of ``text`` that applies to ``agent`` (product token, case-insensitive).

    Groups naming our token win over ``*``; several groups for the same agent
    are merged, as RFC 9309 says."""
    token = agent.split("/", 1)[0].strip().lower()
    groups: list[tuple[list[str], list[_Rule], list[float]]] = []
    sitemaps: list[str] = []
    current: tuple[list[str], list[_Rule], list[float]] | None = None
    in_agents = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if current is None or not in_agents:
                current = ([], [], [])
                groups.append(current)
            current[0].append(value.lower())
            in_agents = True
            continue
        if key == "sitemap":
            sitemaps.append(value)
            continue
        in_agents = False
        if current is None:
            continue
        if key in ("allow", "disallow"):
            path = _normalise_path(value) if value else ""
            current[1].append(_Rule(key == "allow", path, _pattern_regex(path)))
        elif key == "crawl-delay":
            with contextlib.suppress(ValueError):
                current[2].append(float(value))
    mine = [
        g for g in groups if any(a != "*" and a and token.startswith(a.split("/")[0]) for a in g[0])
    ]
    chosen = mine or [g for g in groups if "*" in g[0]]
    rules = RobotsRules(sitemaps=sitemaps)
    for _, group_rules, delays in chosen:
        rules.rules.extend(group_rules)
        if delays:
            rules.crawl_delay = max(
                delays + ([rules.crawl_delay] if rules.crawl_delay is not None else [])
            )
    return rules


# -- conditional GET ------------------------------------------------------------


def conditional_headers(cursor: Mapping[str, Any] | None) -> dict[str, str]:
    """If-None-Match / If-Modified-Since from validators saved in a cursor."""
    headers: dict[str, str] = {}
    if cursor:
        if cursor.get("etag"):
            headers["If-None-Match"] = str(cursor["etag"])
        if cursor.get("last_modified"):
            headers["If-Modified-Since"] = str(cursor["last_modified"])
    return headers


def validators(headers: Mapping[str, str]) -> dict[str, str]:
    """The ETag / Last-Modified of a response, to save in the cursor."""
    lower = {k.lower(): v for k, v in headers.items()}
    out: dict[str, str] = {}
    if lower.get("etag"):
        out["etag"] = lower["etag"]
    if lower.get("last-modified"):
        out["last_modified"] = lower["last-modified"]
    return out


# -- the transport --------------------------------------------------------------


class PolitenessState:
    """What politeness remembers in a process: robots.txt per origin, and the
    in-process host limits used when no shared ones are given.

    Shared by every client of a process (see :func:`shared_state`) so that a
    Celery worker building a client per task still fetches robots.txt once a
    day and paces each host across tasks. Its limits hold per process; limits
    that hold across processes come from :func:`crawler.limits.host_limits`."""

    def __init__(self, limits: HostLimits | None = None) -> None:
        self.lock = threading.Lock()
        self.limits: HostLimits = limits if limits is not None else InProcessHostLimits()
        self.robots: dict[str, tuple[float, RobotsRules]] = {}
        self.robots_locks: dict[str, threading.Lock] = {}


_SHARED: dict[str, PolitenessState] = {}
_SHARED_LOCK = threading.Lock()


def shared_state(settings: CrawlerSettings) -> PolitenessState:
    """The process-wide state for these settings (one per distinct settings)."""
    key = settings.model_dump_json()
    with _SHARED_LOCK:
        state = _SHARED.get(key)
        if state is None:
            state = _SHARED[key] = PolitenessState(InProcessHostLimits(default_lease(settings)))
        return state


def reset_shared_state() -> None:
    """Forget all shared politeness state (tests, and every forked child)."""
    with _SHARED_LOCK:
        _SHARED.clear()


def _after_fork_in_child() -> None:
    # A lock or semaphore copied mid-use from the parent could never be
    # released in the child: start the child with fresh state.
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()
    _SHARED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _ReleasingStream(httpx.SyncByteStream):
    """Renews the slot's lease while the body streams, releases it on close."""

    def __init__(self, inner: httpx.SyncByteStream, lease: Lease, every: float) -> None:
        self._inner = inner
        self._lease = lease
        self._every = every
        self._renewed = time.monotonic()
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if time.monotonic() - self._renewed > self._every:
                self._renewed = time.monotonic()
                self._lease.renew()
            yield chunk

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if not self._released:
                self._released = True
                self._lease.release()


class PoliteTransport(httpx.BaseTransport):
    """Wraps another transport with robots.txt, rate limits and backoff (see module doc).

    ``state`` holds the robots.txt cache (a private one when None); ``limits``
    the per-host limits (those of ``state`` when None, built on ``clock``)."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        settings: CrawlerSettings,
        *,
        max_retries: int = 3,
        base_backoff: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        state: PolitenessState | None = None,
        limits: HostLimits | None = None,
    ) -> None:
        self.inner = inner
        self.settings = settings
        self.slot_timeout = max(30.0, 4 * settings.read_timeout)
        self.agent = user_agent(settings)
        self.max_retries = max_retries
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        if state is None:
            state = PolitenessState(InProcessHostLimits(default_lease(settings), clock=clock))
        self.state = state
        self.limits = limits if limits is not None else state.limits
        self._lock = self.state.lock
        self._robots = self.state.robots
        self._robots_locks = self.state.robots_locks

    # robots

    def robots_for(self, url: httpx.URL) -> RobotsRules:
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        now = self._clock()
        with self._lock:
            cached = self._robots.get(origin)
            if cached and cached[0] > now:
                return cached[1]
            lock = self._robots_locks.setdefault(origin, threading.Lock())
        with lock:  # one fetch per origin even with many threads waiting
            with self._lock:
                cached = self._robots.get(origin)
                if cached and cached[0] > now:
                    return cached[1]
            rules, ttl = self._fetch_robots(origin)
            with self._lock:
                self._robots[origin] = (self._clock() + ttl, rules)
            return rules

    def _fetch_robots(self, origin: str) -> tuple[RobotsRules, float]:
        url = httpx.URL(origin + "/robots.txt")
        for _hop in range(5):
            request = httpx.Request(
                "GET", url, headers={"User-Agent": self.agent, "Accept": "text/plain"}
            )
            try:
                response = self._send_paced(request)
                try:
                    body = b""
                    for chunk in response.iter_raw():
                        body += chunk
                        if len(body) > ROBOTS_MAX_BYTES:
                            break
                finally:
                    response.close()
            except httpx.TransportError:
                return RobotsRules(disallow_all=True), ROBOTS_ERROR_TTL
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                url = url.join(response.headers["location"])
                continue
            if 400 <= response.status_code < 500:
                return RobotsRules(), ROBOTS_TTL
            if response.status_code >= 500 or response.status_code != 200:
                return RobotsRules(disallow_all=True), ROBOTS_ERROR_TTL
            text = body[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
            return parse_robots(text, self.agent), ROBOTS_TTL
        return RobotsRules(), ROBOTS_TTL

    # pacing

    def _interval(self, crawl_delay: float | None) -> float:
        rps = self.settings.requests_per_second
        interval = 1.0 / rps if rps > 0 else 0.0
        if crawl_delay and self.settings.obey_robots:
            interval = max(interval, crawl_delay)
        return interval

    def _send_paced(
        self, request: httpx.Request, crawl_delay: float | None = None
    ) -> httpx.Response:
        host = request.url.host
        wait = self.limits.reserve(host, self._interval(crawl_delay))
        if wait > 0:
            self._sleep(wait)
        # Bounded wait: a slot leaked by a response nobody closed must not
        # stall this host for the rest of the process (its lease runs out too).
        limit = max(1, self.settings.max_concurrency_per_host)
        lease = self.limits.acquire(host, limit, self.slot_timeout)
        if lease is None:
            raise TransientFetchError(
                f"{host}: no free connection slot after {self.slot_timeout:.0f}s "
                f"(max_concurrency_per_host={self.settings.max_concurrency_per_host})",
                str(request.url),
            )
        try:
            response = self.inner.handle_request(request)
        except BaseException:
            lease.release()
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _ReleasingStream(response.stream, lease, self.limits.lease / 3)
        return response

    def _retry_after(self, response: httpx.Response, attempt: int) -> float:
        from crawler.fetch import _retry_after

        told = _retry_after(response.headers.get("retry-after"))
        if told is not None:
            # Never earlier than the server asked; jitter only adds.
            return told + self._rng() * min(1.0, told * 0.1 + 0.1)
        return float(self._rng() * self.base_backoff * (2**attempt))  # full jitter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        crawl_delay: float | None = None
        if self.settings.obey_robots and request.url.path != "/robots.txt":
            rules = self.robots_for(request.url)
            if not rules.allowed(str(request.url)):
                raise RobotsDisallowed(
                    f"robots.txt of {request.url.host} disallows {request.url}", str(request.url)
                )
            crawl_delay = rules.crawl_delay
        remaining = self.limits.blocked_for(request.url.host)
        if remaining > 0:
            # The host asked us to stay away longer than we sleep: do not
            # contact it again before that time, from any client.
            raise RateLimited(
                f"{request.url.host} asked us to wait (Retry-After); {remaining:.0f}s left",
                str(request.url),
                429,
                remaining,
            )
        attempt = 0
        while True:
            response = self._send_paced(request, crawl_delay)
            if response.status_code not in (429, 503) or attempt >= self.max_retries:
                return response
            wait = self._retry_after(response, attempt)
            if wait > self.max_backoff:
                self.limits.block(request.url.host, wait)
                return response
            response.close()
            self.limits.hold_off(request.url.host, wait)
            attempt += 1

    def close(self) -> None:
        self.inner.close()
