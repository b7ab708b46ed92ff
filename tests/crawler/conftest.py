from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crawler.limits import reset_host_limits
from crawler.localsite import LocalSite
from crawler.politeness import reset_shared_state

from .servers import PayloadServer

SITES = Path(__file__).resolve().parents[1] / "data" / "conformance" / "sites"

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)


def png(tag: int | str) -> bytes:
    """A distinct PNG-signed payload per tag (the crawler sniffs, it does not decode)."""
    return PNG + f"artwatch-test-{tag}".encode()


@pytest.fixture(autouse=True)
def _fresh_politeness() -> Iterator[None]:
    """Servers reuse ephemeral ports across tests: never carry robots.txt or host limits over."""
    reset_shared_state()
    reset_host_limits()
    yield
    reset_shared_state()
    reset_host_limits()


@pytest.fixture
def redis_prefix(redis_server_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the test Redis (parallel runs share the
    server), and its keys deleted afterwards."""
    import redis

    prefix = f"artwatch-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_server_url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def site() -> Iterator[LocalSite]:
    with LocalSite() as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


@pytest.fixture
def http() -> Iterator[PayloadServer]:
    """A payload server on 127.0.0.1 for one test."""
    server = PayloadServer().start()
    yield server
    server.stop()
