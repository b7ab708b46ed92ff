from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
    """Servers reuse ephemeral ports across tests: never carry robots.txt over."""
    reset_shared_state()
    yield
    reset_shared_state()


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
