"""Politeness: robots.txt (real files), rate and concurrency limits, backoff, conditional GET."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx
import pytest

from config.settings import CrawlerSettings
from crawler.errors import RateLimited, RobotsDisallowed
from crawler.fetch import AddressPolicy, SafeTransport, fetch_page, user_agent
from crawler.politeness import PoliteTransport, parse_robots, reset_shared_state
from crawler.service import build_client
from crawler.sources.rss import FeedSource

from .conftest import SITES
from .servers import PayloadServer, Reply, concurrency_route

ROBOTS = SITES / "robots"
AGENT = "artwatch/0.1 (+https://artwatch.test)"


def _robots(host: str, agent: str = AGENT) -> Any:
    return parse_robots((ROBOTS / f"{host}.robots.txt").read_text(encoding="utf-8"), agent)


def test_reddit_robots_wildcards_block_json_listings() -> None:
    rules = _robots("www.reddit.com")
    assert not rules.allowed("https://www.reddit.com/r/art/new.json")
    assert not rules.allowed("https://www.reddit.com/r/art/new.json?limit=100")
    assert not rules.allowed("https://www.reddit.com/r/art/submit")
    assert rules.allowed("https://www.reddit.com/r/art/submit/extra")  # `$` anchors the end
    assert rules.allowed("https://www.reddit.com/r/art/new/")


def test_imgur_allow_beats_shorter_disallow() -> None:
    rules = _robots("imgur.com")
    assert rules.allowed("https://imgur.com/3/gallery/abc")
    assert not rules.allowed("https://imgur.com/3/image/abc")
    assert not rules.allowed("https://imgur.com/account/settings")
    assert rules.allowed("https://imgur.com/gallery/abc")
    assert rules.sitemaps and rules.sitemaps[0].startswith("https://imgur.com/")


def test_flickr_crawl_delay_group_with_blank_line() -> None:
    coccoc = _robots("www.flickr.com", "coccoc")
    assert coccoc.crawl_delay == 10
    assert not coccoc.allowed("https://www.flickr.com/images/x.jpg")  # rule after the blank line
    ours = _robots("www.flickr.com")
    assert ours.crawl_delay is None
    assert not ours.allowed("https://www.flickr.com/images/spaceball.gif")
    assert not ours.allowed("https://www.flickr.com/photos/tags/cat/page2")
    assert ours.allowed("https://www.flickr.com/photos/someone/123/")


def test_deviantart_and_tumblr_query_wildcards() -> None:
    da = _robots("www.deviantart.com")
    assert not da.allowed("https://www.deviantart.com/search?q=cat")
    assert not da.allowed("https://www.deviantart.com/users/x?y=1")
    assert da.allowed("https://www.deviantart.com/users/x")
    assert da.allowed("https://www.deviantart.com/artist/art/Work-123")
    tumblr = _robots("www.tumblr.com")
    assert not tumblr.allowed("https://www.tumblr.com/dashboard")
    assert tumblr.allowed("https://www.tumblr.com/someblog")


def _settings(**kw: Any) -> CrawlerSettings:
    base: dict[str, Any] = dict(
        allow_internal=["127.0.0.1"],
        requests_per_second=0,
        obey_robots=True,
        user_agent="artwatch/0.1",
        contact_url="https://artwatch.test",
    )
    base.update(kw)
    return CrawlerSettings(**base)


def test_robots_cached_and_obeyed(http: PayloadServer) -> None:
    http.static("/robots.txt", b"User-agent: *\nDisallow: /private\n", "text/plain")
    http.static("/public", b"ok", "text/plain")
    http.static("/private/x", b"secret", "text/plain")
    with build_client(_settings()) as client:
        for _ in range(3):
            assert fetch_page(client, http.url + "/public").body == b"ok"
        with pytest.raises(RobotsDisallowed, match="/private/x"):
            fetch_page(client, http.url + "/private/x")
    assert len(http.hits("/robots.txt")) == 1
    assert http.hits("/private/x") == []
    assert http.hits("/robots.txt")[0].headers["user-agent"] == user_agent(_settings())


def test_robots_server_error_means_disallow_and_missing_means_allow(http: PayloadServer) -> None:
    http.static("/page", b"ok", "text/plain")
    http.routes["/robots.txt"] = lambda p, q, h: Reply(500, {}, b"oops")
    with build_client(_settings()) as client, pytest.raises(RobotsDisallowed):
        fetch_page(client, http.url + "/page")
    http.routes["/robots.txt"] = lambda p, q, h: Reply(404, {}, b"none")
    # still cached: the error counts for a few minutes
    with build_client(_settings()) as client, pytest.raises(RobotsDisallowed):
        fetch_page(client, http.url + "/page")
    reset_shared_state()  # as if ROBOTS_ERROR_TTL had passed
    with build_client(_settings()) as client:
        assert fetch_page(client, http.url + "/page").body == b"ok"


def test_robots_can_be_switched_off(http: PayloadServer) -> None:
    http.static("/robots.txt", b"User-agent: *\nDisallow: /\n", "text/plain")
    http.static("/page", b"ok", "text/plain")
    with build_client(_settings(obey_robots=False)) as client:
        assert fetch_page(client, http.url + "/page").body == b"ok"
    assert http.hits("/robots.txt") == []


def _gaps(http: PayloadServer, path: str) -> list[float]:
    times = [r.at for r in http.hits(path)]
    return [b - a for a, b in itertools.pairwise(times)]


def test_crawl_delay_obeyed(http: PayloadServer) -> None:
    http.static(
        "/robots.txt",
        b"User-agent: artwatch\nCrawl-delay: 0.3\n\nUser-agent: *\nDisallow: /\n",
        "text/plain",
    )
    http.static("/p", b"ok", "text/plain")
    with build_client(_settings()) as client:
        for _ in range(3):
            fetch_page(client, http.url + "/p")
    gaps = _gaps(http, "/p")  # measured at the server: allow for scheduling noise
    assert len(gaps) == 2 and sum(gaps) >= 0.45  # 2 intervals of 0.3 s, less arrival jitter


def test_per_host_rate_limit(http: PayloadServer) -> None:
    http.static("/p", b"ok", "text/plain")
    with build_client(_settings(requests_per_second=5, obey_robots=False)) as client:
        for _ in range(4):
            fetch_page(client, http.url + "/p")
    gaps = _gaps(http, "/p")  # measured at the server: allow for scheduling noise
    assert len(gaps) == 3 and sum(gaps) >= 0.45  # 3 intervals of 0.2 s, less arrival jitter


def test_per_host_concurrency_cap(http: PayloadServer) -> None:
    state = concurrency_route(http, "/slow", 0.15)
    with build_client(_settings(max_concurrency_per_host=2, obey_robots=False)) as client:
        threads = [
            threading.Thread(target=fetch_page, args=(client, http.url + "/slow")) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(http.hits("/slow")) == 6
    assert state["max"] == 2


class _Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def _polite_client(settings: CrawlerSettings, sleep: _Recorder, **kw: Any) -> httpx.Client:
    inner = SafeTransport(AddressPolicy.from_list(settings.allow_internal))
    return httpx.Client(transport=PoliteTransport(inner, settings, sleep=sleep, **kw))


def test_429_honours_retry_after(http: PayloadServer) -> None:
    replies = iter(
        [Reply(429, {"Retry-After": "2"}), Reply(200, {"Content-Type": "text/plain"}, b"ok")]
    )
    http.routes["/p"] = lambda p, q, h: next(replies)
    sleep = _Recorder()
    with _polite_client(_settings(obey_robots=False), sleep, rng=lambda: 0.5) as client:
        assert fetch_page(client, http.url + "/p").body == b"ok"
    assert len(http.hits("/p")) == 2
    assert len(sleep.sleeps) == 1 and 2.0 <= sleep.sleeps[0] <= 2.5  # never earlier than asked


def test_503_backs_off_exponentially_with_jitter(http: PayloadServer) -> None:
    replies = iter(
        [Reply(503), Reply(503), Reply(503), Reply(200, {"Content-Type": "text/plain"}, b"ok")]
    )
    http.routes["/p"] = lambda p, q, h: next(replies)
    sleep = _Recorder()
    jitter = iter([0.5, 0.25, 1.0])
    with _polite_client(
        _settings(obey_robots=False), sleep, rng=lambda: next(jitter), base_backoff=1.0
    ) as c:
        assert fetch_page(c, http.url + "/p").body == b"ok"
    assert sleep.sleeps == pytest.approx([0.5 * 1, 0.25 * 2, 1.0 * 4], abs=0.05)


def test_retry_after_too_long_gives_rate_limited_error(http: PayloadServer) -> None:
    http.routes["/p"] = lambda p, q, h: Reply(429, {"Retry-After": "3600"})
    sleep = _Recorder()
    # a private state: this client only
    with (
        _polite_client(_settings(obey_robots=False), sleep, max_backoff=60) as client,
        pytest.raises(RateLimited) as info,
    ):
        fetch_page(client, http.url + "/p")
    assert info.value.retry_after == 3600 and sleep.sleeps == []
    assert isinstance(info.value, ConnectionError)  # Celery's autoretry treats it as transient
    with build_client(_settings(obey_robots=False)) as client:
        with pytest.raises(RateLimited):
            fetch_page(client, http.url + "/p")  # first contact through the shared state
        with pytest.raises(RateLimited, match="asked us to wait") as again:
            fetch_page(client, http.url + "/p")
    assert len(http.hits("/p")) == 2  # the last request never reached the host
    assert again.value.retry_after is not None and again.value.retry_after > 3500


def test_retries_give_up_after_max(http: PayloadServer) -> None:
    http.routes["/p"] = lambda p, q, h: Reply(503)
    sleep = _Recorder()
    with _polite_client(
        _settings(obey_robots=False), sleep, max_retries=2, rng=lambda: 0.0
    ) as client, pytest.raises(RateLimited):
        fetch_page(client, http.url + "/p")
    assert len(http.hits("/p")) == 3


def test_conditional_get_with_etag_and_last_modified(http: PayloadServer) -> None:
    feed = (SITES / "rss" / "feedparser__rss__item_enclosure_multiple.xml").read_bytes()

    def route(p: str, q: dict[str, str], h: dict[str, str]) -> Reply:
        if (
            h.get("if-none-match") == '"v1"'
            and h.get("if-modified-since") == "Wed, 01 Jul 2026 00:00:00 GMT"
        ):
            return Reply(304, {"ETag": '"v1"'})
        return Reply(
            200,
            {
                "Content-Type": "application/rss+xml",
                "ETag": '"v1"',
                "Last-Modified": "Wed, 01 Jul 2026 00:00:00 GMT",
            },
            feed,
        )

    http.routes["/feed"] = route
    with build_client(_settings(obey_robots=False)) as client:
        src = FeedSource(http.url + "/feed", {}, client)
        records, cursor = src.poll(None)
        assert [r.image_url for r in records] == ["http://example.com/1", "http://example.com/2"]
        assert cursor["etag"] == '"v1"' and cursor["last_modified"]
        again, cursor2 = src.poll(cursor)
        assert again == [] and cursor2 == cursor
    assert len(http.hits("/feed")) == 2
    assert http.hits("/feed")[1].headers["if-none-match"] == '"v1"'


def test_clients_of_one_process_share_robots_and_pacing(http: PayloadServer) -> None:
    """Workers build a client per task: robots.txt must still be fetched once
    and the host paced across clients."""
    http.static("/robots.txt", b"User-agent: *\nCrawl-delay: 0.3\n", "text/plain")
    http.static("/p", b"ok", "text/plain")
    for _ in range(3):
        with build_client(_settings()) as client:
            fetch_page(client, http.url + "/p")
    assert len(http.hits("/robots.txt")) == 1
    gaps = _gaps(http, "/p")
    assert len(gaps) == 2 and sum(gaps) >= 0.45


def test_reddit_source_refused_by_reddits_real_robots(http: PayloadServer) -> None:
    """Reddit's robots.txt disallows /*.json for generic crawlers, so the
    listing is never requested while robots are obeyed."""
    from crawler.sources.reddit import RedditSource

    http.static("/robots.txt", (ROBOTS / "www.reddit.com.robots.txt").read_bytes(), "text/plain")
    http.static(
        "/r/art/new.json", b'{"kind": "Listing", "data": {"children": []}}', "application/json"
    )
    with build_client(_settings()) as client, pytest.raises(RobotsDisallowed, match=r"new\.json"):
        RedditSource(http.url + "/r/art", {}, client).poll(None)
    assert http.hits("/r/art/new.json") == []


def test_leaked_slot_does_not_stall_a_host_forever(http: PayloadServer) -> None:
    from crawler.errors import TransientFetchError

    http.static("/p", b"ok", "text/plain")
    settings = _settings(obey_robots=False, max_concurrency_per_host=1)
    transport = PoliteTransport(SafeTransport(AddressPolicy.from_list(["127.0.0.1"])), settings)
    transport.slot_timeout = 0.3
    with httpx.Client(transport=transport) as client:
        leaked = client.send(
            client.build_request("GET", http.url + "/p"), stream=True
        )  # never closed
        t0 = time.monotonic()
        with pytest.raises(TransientFetchError, match="no free connection slot"):
            fetch_page(client, http.url + "/p")
        assert 0.25 <= time.monotonic() - t0 < 2
        leaked.close()
        assert fetch_page(client, http.url + "/p").body == b"ok"  # closing frees the slot
