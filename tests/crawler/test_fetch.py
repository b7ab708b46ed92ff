"""Safe fetching against a real server on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from config.settings import CrawlerSettings
from crawler.errors import BlockedAddress, NotAnImage, Timeout, TooLarge, TooManyRedirects
from crawler.fetch import (
    AddressPolicy,
    SafeFetcher,
    SafeTransport,
    fetch_page,
    is_public_address,
    sniff_image_type,
)
from crawler.service import build_client

from .conftest import png
from .servers import DripServer, PayloadServer, Reply

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32


def _settings(**kw: Any) -> CrawlerSettings:
    base: dict[str, Any] = dict(
        allow_internal=["127.0.0.1"],
        requests_per_second=0,
        obey_robots=False,
        user_agent="artwatch-test/1",
        contact_url="https://artwatch.test/contact",
    )
    base.update(kw)
    return CrawlerSettings(**base)


@pytest.mark.parametrize(
    "addr",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "127.1.2.3",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.0.170",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "fd00:ec2::254",
        "::127.0.0.1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_refused(addr: str) -> None:
    ip = ipaddress.ip_address(addr)
    assert not is_public_address(ip)
    with pytest.raises(BlockedAddress):
        AddressPolicy().check("example.test", ip)


@pytest.mark.parametrize(
    "addr", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_allowed(addr: str) -> None:
    assert is_public_address(ipaddress.ip_address(addr))
    AddressPolicy().check("example.test", ipaddress.ip_address(addr))


def test_allowlist_by_cidr_and_host() -> None:
    policy = AddressPolicy.from_list(["127.0.0.0/8", "intranet.example", "::1"])
    policy.check("x", ipaddress.ip_address("127.0.0.5"))
    policy.check("x", ipaddress.ip_address("::ffff:127.0.0.5"))  # mapped form of an allowed v4
    policy.check("x", ipaddress.ip_address("::1"))
    policy.check("Intranet.Example.", ipaddress.ip_address("10.1.1.1"))
    with pytest.raises(BlockedAddress):
        policy.check("x", ipaddress.ip_address("10.1.1.1"))


def test_loopback_refused_without_allowlist(http: PayloadServer) -> None:
    http.static("/a.png", png(1), "image/png")
    with build_client(_settings(allow_internal=[])) as client, pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"):
        fetch_page(client, http.url + "/a.png")
    assert http.requests == []  # refused before connecting


def test_check_is_at_connect_time_so_rebinding_fails(http: PayloadServer) -> None:
    """The resolver answers an allowed address first and a forbidden one next
    (DNS rebinding). We resolve once per connection and connect to the address
    we checked, so the first request reaches the allowed server and a later
    connection that resolves to the forbidden address is refused."""
    http.static("/", b"ok", "text/plain")
    port = int(http.url.rsplit(":", 1)[1])
    answers = iter(["127.0.0.1", "127.0.0.2"])
    calls: list[str] = []

    def resolver(host: str, p: int, **kw: Any) -> list[Any]:
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), p))]

    policy = AddressPolicy.from_list(["127.0.0.1"])
    with httpx.Client(transport=SafeTransport(policy, resolver=resolver)) as c:
        assert c.get(f"http://rebind.test:{port}/").text == "ok"
        assert calls == ["rebind.test"]
    with (
        httpx.Client(transport=SafeTransport(policy, resolver=resolver)) as c,
        pytest.raises(BlockedAddress, match=r"127\.0\.0\.2"),
    ):
        c.get(f"http://rebind.test:{port}/")


def test_mixed_dns_answer_refused() -> None:
    def resolver(host: str, p: int, **kw: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", p)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", p, 0, 0)),
        ]

    with (
        httpx.Client(transport=SafeTransport(AddressPolicy(), resolver=resolver)) as c,
        pytest.raises(BlockedAddress, match="::1"),
    ):
        c.get("http://mixed.test/")


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/x",
        "http://0.0.0.0:{port}/x",
    ],
)
def test_every_redirect_hop_is_revalidated(http: PayloadServer, target: str) -> None:
    port = http.url.rsplit(":", 1)[1]
    http.routes["/start"] = lambda p, q, h: Reply(302, {"Location": "/hop"})
    http.routes["/hop"] = lambda p, q, h: Reply(302, {"Location": target.format(port=port)})
    with build_client(_settings()) as client, pytest.raises(BlockedAddress):
        SafeFetcher(client, _settings()).fetch_image(http.url + "/start")
    assert [r.path for r in http.requests] == ["/start", "/hop"]


def test_redirects_limited_and_final_url_recorded(http: PayloadServer) -> None:
    http.static("/img.png", png("r"), "image/png")
    http.routes["/a"] = lambda p, q, h: Reply(301, {"Location": "/b"})
    http.routes["/b"] = lambda p, q, h: Reply(302, {"Location": "/img.png"})
    http.routes["/loop"] = lambda p, q, h: Reply(302, {"Location": "/loop"})
    settings = _settings(max_redirects=3)
    with build_client(settings) as client:
        img = SafeFetcher(client, settings).fetch_image(http.url + "/a")
        assert img.final_url == http.url + "/img.png" and img.data == png("r")
        with pytest.raises(TooManyRedirects):
            SafeFetcher(client, settings).fetch_image(http.url + "/loop")
    assert len(http.hits("/loop")) == 4  # the first request plus 3 redirects


def test_size_cap_with_and_without_content_length(http: PayloadServer) -> None:
    big = png("big") + b"\x00" * 5000
    http.static("/declared.png", big, "image/png")
    http.routes["/chunked.png"] = lambda p, q, h: Reply(
        200,
        {"Content-Type": "image/png"},
        stream=iter([big[i : i + 512] for i in range(0, len(big), 512)]),
    )
    settings = _settings(max_image_bytes=2000)
    with build_client(settings) as client:
        fetcher = SafeFetcher(client, settings)
        with pytest.raises(TooLarge, match="Content-Length"):
            fetcher.fetch_image(http.url + "/declared.png")
        with pytest.raises(TooLarge, match="exceeds"):
            fetcher.fetch_image(http.url + "/chunked.png")


def test_read_timeout(http: PayloadServer) -> None:
    def slow() -> Iterator[bytes]:
        time.sleep(1.0)
        yield png("slow")

    http.routes["/slow.png"] = lambda p, q, h: Reply(
        200, {"Content-Type": "image/png"}, stream=slow()
    )
    settings = _settings(read_timeout=0.2)
    with build_client(settings) as client:
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            SafeFetcher(client, settings).fetch_image(http.url + "/slow.png")
        assert time.monotonic() - t0 < 0.9


def test_connect_timeout_setting_is_used() -> None:
    settings = _settings(connect_timeout=0.7, read_timeout=3.0)
    with build_client(settings) as client:
        assert client.timeout.connect == 0.7 and client.timeout.read == 3.0


def test_type_sniffed_from_bytes_not_content_type(http: PayloadServer) -> None:
    http.static("/lies.png", b"<html><body>not an image</body></html>", "image/png")
    http.static("/real.txt", JPEG, "text/plain")
    with build_client(_settings()) as client:
        fetcher = SafeFetcher(client, _settings())
        with pytest.raises(NotAnImage, match="declared image/png"):
            fetcher.fetch_image(http.url + "/lies.png")
        img = fetcher.fetch_image(http.url + "/real.txt")
        assert img.content_type == "image/jpeg" and img.headers["content-type"] == "text/plain"


@pytest.mark.parametrize(
    "data,mime",
    [
        (png(0), "image/png"),
        (JPEG, "image/jpeg"),
        (b"GIF89a...", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x1cftypavif", "image/avif"),
        (b"\x00\x00\x00\x18ftypheic", "image/heic"),
        (b"<svg xmlns=", None),
        (b"", None),
    ],
)
def test_sniff(data: bytes, mime: str | None) -> None:
    assert sniff_image_type(data) == mime


def test_user_agent_names_contact_url(http: PayloadServer) -> None:
    http.static("/a.png", png(1), "image/png")
    with build_client(_settings()) as client:
        SafeFetcher(client, _settings()).fetch_image(http.url + "/a.png")
    assert (
        http.requests[-1].headers["user-agent"]
        == "artwatch-test/1 (+https://artwatch.test/contact)"
    )


def test_environment_proxy_ignored(http: PayloadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would connect on our behalf, bypassing the address check.
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.0.0.1:3128")
    http.static("/a.png", png(1), "image/png")
    with build_client(_settings()) as client:
        assert SafeFetcher(client, _settings()).fetch_image(http.url + "/a.png").data == png(1)


def test_slow_drip_body_hits_total_budget(http: PayloadServer) -> None:
    def drip() -> Iterator[bytes]:
        yield png("drip")
        for _ in range(40):
            time.sleep(0.05)  # each read is well inside the read timeout
            yield b"\x00" * 10

    http.routes["/drip.png"] = lambda p, q, h: Reply(
        200, {"Content-Type": "image/png"}, stream=drip()
    )
    settings = _settings(read_timeout=0.2)
    with build_client(settings) as client:
        t0 = time.monotonic()
        with pytest.raises(Timeout, match="in all"):
            SafeFetcher(client, settings).fetch_image(http.url + "/drip.png")
        assert time.monotonic() - t0 < 1.5


# read_timeout 0.3 s gives a 0.9 s budget for the whole exchange; every piece
# arrives 0.15 s after the last, well inside the read timeout.
_DRIP_SETTINGS = {"read_timeout": 0.3}
_DRIP_BUDGET = 0.9
_MARGIN = 0.6


def test_header_drip_is_cut_at_the_exchange_deadline() -> None:
    # One header line every 0.15 s for 6 s: before the deadline covered headers,
    # this fetch took the full 6 s (at default settings, days).
    lines = [b"HTTP/1.1 200 OK\r\n"] + [f"X-Drip-{i}: x\r\n".encode() for i in range(40)]
    settings = _settings(**_DRIP_SETTINGS)
    with DripServer(lines, 0.15) as server, build_client(settings) as client:
        t0 = time.monotonic()
        with pytest.raises(Timeout, match=r"connect, headers and body\) took longer than 0.9s in all"):
            SafeFetcher(client, settings).fetch_image(server.url + "/a.png")
        assert time.monotonic() - t0 < _DRIP_BUDGET + _MARGIN


def test_body_drip_after_quick_headers_is_cut_at_the_same_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + png("x")
    settings = _settings(**_DRIP_SETTINGS)
    with DripServer([head] + [b"\x00" * 8] * 40, 0.15) as server, build_client(settings) as client:
        t0 = time.monotonic()
        with pytest.raises(Timeout, match="in all"):
            fetch_page(client, server.url + "/page")
        assert time.monotonic() - t0 < _DRIP_BUDGET + _MARGIN


def test_headers_and_body_share_one_deadline() -> None:
    # Headers take 0.6 s of the 0.9 s budget; the body then gets only what is left.
    head = [b"HTTP/1.1 200 OK\r\n", b"Content-Type: image/png\r\n", b"Content-Length: 100000\r\n",
            b"X-A: 1\r\n", b"\r\n" + png("y")]
    settings = _settings(**_DRIP_SETTINGS)
    with DripServer(head + [b"\x00" * 8] * 40, 0.15) as server, build_client(settings) as client:
        t0 = time.monotonic()
        with pytest.raises(Timeout, match="in all"):
            SafeFetcher(client, settings).fetch_image(server.url + "/b.png")
        assert time.monotonic() - t0 < _DRIP_BUDGET + _MARGIN


def test_a_quick_exchange_is_untouched_by_the_deadline() -> None:
    # Within budget, a dripped reply still completes: the deadline only bounds.
    body = png("ok")
    head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    settings = _settings(**_DRIP_SETTINGS)
    with DripServer([head, body], 0.05) as server, build_client(settings) as client:
        assert SafeFetcher(client, settings).fetch_image(server.url + "/c.png").data == body


def test_xml_entity_bomb_is_a_malformed_page(http: PayloadServer) -> None:
    from crawler.errors import MalformedPage
    from crawler.sources.rss import FeedSource

    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b"<rss><channel><item><title>&lol2;</title></item></channel></rss>"
    )
    http.static("/feed.xml", bomb, "application/rss+xml")
    with build_client(_settings()) as client, pytest.raises(MalformedPage, match="not well-formed"):
        FeedSource(http.url + "/feed.xml", {}, client).poll(None)


def test_sse_line_without_end_is_capped(http: PayloadServer) -> None:
    from crawler.errors import MalformedPage
    from crawler.sources.wikimedia import WikimediaSource

    def endless() -> Iterator[bytes]:
        yield b"data: "
        for _ in range(50):
            yield b"x" * 1000

    http.routes["/stream"] = lambda p, q, h: Reply(
        200, {"Content-Type": "text/event-stream"}, stream=endless()
    )
    with build_client(_settings()) as client:
        src = WikimediaSource(http.url + "/stream", {}, client, max_page_bytes=10_000)
        with pytest.raises(MalformedPage, match="exceeds 10000 bytes"):
            list(src.stream(None, idle_timeout=2))


def test_websocket_source_applies_the_same_address_policy() -> None:
    from crawler.sources.bluesky import BlueskySource

    from .servers import JetstreamServer

    ws = JetstreamServer().start()
    try:
        with (
            build_client(_settings(allow_internal=[])) as client,
            pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"),
        ):
            list(BlueskySource(ws.url, {}, client).stream(None, idle_timeout=0.2))
        assert ws.connections == []
        with build_client(_settings()) as client:
            assert list(BlueskySource(ws.url, {}, client).stream(None, idle_timeout=0.2)) == []
        assert len(ws.connections) == 1
    finally:
        ws.stop()
