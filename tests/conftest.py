"""Shared fixtures: real PostgreSQL, Redis and S3 servers, fresh data dirs.

``ARTWATCH_TEST_POSTGRES_URL`` and ``ARTWATCH_TEST_REDIS_URL`` name the real
servers (the Makefile and CI set both). When a URL is set but the server does
not answer, the tests that need it fail: they are never skipped silently.

S3: ``ARTWATCH_TEST_S3_URL`` names an S3-compatible endpoint (credentials from
the usual ``AWS_*`` variables); without it the session starts moto's
standalone server (``moto_server``, from the test extra) on a free 127.0.0.1
port. Each test gets a bucket of its own, so parallel runs do not collide.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
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


class S3Server:
    """moto's standalone S3 server as a subprocess on a free 127.0.0.1 port."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
        if exe is None:
            pytest.fail("moto_server is not installed (pip install -e '.[test]'), and ARTWATCH_TEST_S3_URL is unset")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moto_server exited at start: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail("moto_server did not start listening within 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def s3_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible endpoint: ``ARTWATCH_TEST_S3_URL``, or moto's server for this session."""
    url = os.environ.get("ARTWATCH_TEST_S3_URL")
    if url:
        yield url
        return
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    try:
        yield server.url
    finally:
        server.stop()


def s3_credentials() -> dict[str, str]:
    """The ``AWS_*`` variables a client of the test server needs (moto takes any)."""
    return {
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }


def make_bucket(endpoint: str) -> str:
    """A new, empty bucket on ``endpoint``; its name is unique to the caller."""
    import boto3

    name = f"artwatch-test-{uuid.uuid4().hex[:12]}"
    creds = s3_credentials()
    boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=creds["AWS_DEFAULT_REGION"],
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"], aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_server_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment that selects an S3 blob store in a fresh bucket (also set in os.environ,
    so settings loaded in this process and subprocesses given it agree)."""
    env = {
        **s3_credentials(),
        "ARTWATCH_BLOBS__KIND": "s3",
        "ARTWATCH_BLOBS__URL": f"s3://{make_bucket(s3_server_url)}/blobs",
        "ARTWATCH_BLOBS__ENDPOINT_URL": s3_server_url,
        "ARTWATCH_BLOBS__REGION": s3_credentials()["AWS_DEFAULT_REGION"],
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
