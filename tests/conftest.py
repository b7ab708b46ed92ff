"""Shared fixtures: real PostgreSQL and Redis when configured, fresh data dirs.

``ARTWATCH_TEST_POSTGRES_URL`` and ``ARTWATCH_TEST_REDIS_URL`` name the real
servers (the Makefile and CI set both). When a URL is set but the server does
not answer, the tests that need it fail: they are never skipped silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings, load_settings


def _pg_admin_url() -> str | None:
    return os.environ.get("ARTWATCH_TEST_POSTGRES_URL") or None


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = _pg_admin_url()
    if not url:
        pytest.skip("ARTWATCH_TEST_POSTGRES_URL is not set (the Makefile and CI set it)")
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the real server, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"artwatch_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'artwatch.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    url = os.environ.get("ARTWATCH_TEST_REDIS_URL")
    if not url:
        pytest.skip("ARTWATCH_TEST_REDIS_URL is not set (the Makefile and CI set it)")
    return url


@pytest.fixture
def test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Embedded-default settings in a fresh data dir, CLIP off, loopback allowed."""
    for key in list(os.environ):
        if key.startswith("ARTWATCH_") and not key.startswith("ARTWATCH_TEST_"):
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    monkeypatch.setenv("ARTWATCH_DATA_DIR", str(data))
    monkeypatch.setenv("ARTWATCH_MATCHING__USE_EMBEDDER", "false")
    monkeypatch.setenv("ARTWATCH_MATCHING__CLIP_PRETRAINED", "")
    monkeypatch.setenv("ARTWATCH_CRAWLER__ALLOW_INTERNAL", '["127.0.0.1"]')
    return load_settings()
