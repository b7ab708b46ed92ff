"""``users`` commands and the ``web`` command (a real uvicorn in a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from webapp_testkit import World, login, make_settings, start_web_command, wait_until_answering

from config.settings import ConfigError
from storage.models import Account, Role
from webapp.cli import users_group
from webapp.security import resolve_secret_key, verify_password


def _obj(world: World) -> SimpleNamespace:
    return SimpleNamespace(settings=world.settings, sessions=world.sessions, blobs=world.blobs)


def test_users_add_list_and_token(world: World) -> None:
    runner = CliRunner()
    r = runner.invoke(
        users_group,
        ["add", "Root@Example.com", "--role", "admin", "--password-stdin"],
        input="a long password\n",
        obj=_obj(world),
    )
    assert r.exit_code == 0, r.output
    assert "added admin root@example.com" in r.output
    with world.sessions() as s:
        acct = s.scalars(select(Account)).one()
        assert acct.role == Role.ADMIN and verify_password(acct.password_hash, "a long password")
    assert (
        login(world.client(), "root@example.com", "a long password").headers["location"]
        == "/dashboard"
    )

    dup = runner.invoke(
        users_group,
        ["add", "root@example.com", "--password-stdin"],
        input="another pw 123\n",
        obj=_obj(world),
    )
    assert dup.exit_code == 2 and "already exists" in dup.output
    short = runner.invoke(
        users_group, ["add", "x@example.com", "--password-stdin"], input="short\n", obj=_obj(world)
    )
    assert short.exit_code == 2 and "at least 10 characters" in short.output

    listed = runner.invoke(users_group, ["list"], obj=_obj(world))
    assert (
        listed.exit_code == 0 and "root@example.com" in listed.output and "admin" in listed.output
    )

    tok = runner.invoke(users_group, ["token", "root@example.com"], obj=_obj(world))
    assert tok.exit_code == 0
    token = tok.output.strip()
    from fastapi.testclient import TestClient

    api = TestClient(world.app, headers={"Authorization": f"Bearer {token}"})
    assert api.get("/api/v1/works").status_code == 200
    missing = runner.invoke(users_group, ["token", "nobody@example.com"], obj=_obj(world))
    assert missing.exit_code == 2 and "no account for nobody@example.com" in missing.output


def test_secret_key_is_generated_once_per_data_dir_and_required_when_distributed(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, web={"secret_key": ""})
    first = resolve_secret_key(settings)
    assert len(first) >= 32 and resolve_secret_key(settings) == first
    assert (tmp_path / "web_secret_key").stat().st_mode & 0o077 == 0
    distributed = make_settings(
        tmp_path, web={"secret_key": ""}, broker_url="redis://127.0.0.1:6379/0"
    )
    with pytest.raises(ConfigError, match=r"web\.secret_key"):
        resolve_secret_key(distributed)


_RESOLVE_KEY = """
from config.settings import load_settings
from webapp.security import resolve_secret_key
print(resolve_secret_key(load_settings()))
"""


def test_services_processes_with_different_data_dirs_resolve_one_secret_key(database_url: str,
                                                                            tmp_path: Path) -> None:
    """Two machines (here: processes with DATA_DIRs of their own and a Redis broker) with no
    web.secret_key: in services mode both generate one at once and end up with the same."""
    from storage.db import make_engine
    from storage.models import Base

    db = make_engine(database_url)
    Base.metadata.create_all(db)
    db.dispose()
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARTWATCH_") or k.startswith("ARTWATCH_TEST_")}
    base.update(ARTWATCH_DATABASE_URL=database_url, ARTWATCH_SHARED__KIND="services",
                ARTWATCH_BROKER_URL="redis://127.0.0.1:6379/15")
    procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE_KEY],
                              env={**base, "ARTWATCH_DATA_DIR": str(tmp_path / d)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in ("web", "worker")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    keys = {out.strip() for out, _ in outs}
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert not (tmp_path / "web" / "web_secret_key").exists() and not (tmp_path / "worker" / "web_secret_key").exists()
    later = make_settings(tmp_path / "third", web={"secret_key": ""}, database_url=database_url,
                          shared={"kind": "services"}, broker_url="redis://127.0.0.1:6379/15")
    assert resolve_secret_key(later) == outs[0][0].strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_web_command_serves_and_prints_the_url(tmp_path: Path) -> None:
    port = _free_port()
    proc = start_web_command(tmp_path, port, capture=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"serving on http://127.0.0.1:{port}/" in first, first
        r = wait_until_answering(f"http://127.0.0.1:{port}/login", proc, timeout=30)
        assert r.status_code == 200 and "Log in" in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
