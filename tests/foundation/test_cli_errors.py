"""Known failures print one clear line and exit 2: never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from config.settings import Settings


def artwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, check=False)


def assert_clear_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_command_has_help(test_settings: Settings) -> None:
    from workers.cli import cli

    def walk(cmd: click.Command, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    paths = list(walk(cli, []))
    required = [["init"], ["works", "add"], ["works", "import"], ["works", "list"], ["works", "remove"],
                ["sources", "add"], ["sources", "list"], ["sources", "remove"], ["run"], ["worker"], ["crawl"],
                ["scan"], ["notices", "list"], ["notices", "show"], ["notices", "approve"],
                ["notices", "reject"], ["web"], ["status"]]
    for req in required:
        assert req in paths, f"artwatch {' '.join(req)} is missing"
    from click.testing import CliRunner

    runner = CliRunner()
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_second_init_keeps_data(test_settings: Settings, tmp_path: Path) -> None:
    assert artwatch("init").returncode == 0
    assert artwatch("owners", "set", "keep@example.com").returncode == 0
    assert_clear_error(artwatch("init"), "already initialised", "nothing changed")
    listed = artwatch("owners", "list")
    assert "keep@example.com" in listed.stdout


def test_commands_before_init_say_so(test_settings: Settings) -> None:
    assert_clear_error(artwatch("works", "list"), "artwatch init")


@pytest.mark.parametrize("case", ["missing", "folder", "not-an-image"])
def test_works_add_bad_file(test_settings: Settings, tmp_path: Path, case: str) -> None:
    artwatch("init")
    path = tmp_path / "logo.png"
    if case == "folder":
        path.mkdir()
    elif case == "not-an-image":
        path.write_bytes(b"this is a text file, not a PNG")
    proc = artwatch("works", "add", str(path), "--owner", "o@example.com")
    assert_clear_error(proc, "logo.png")
    assert "no works registered" in artwatch("works", "list").stdout


def test_unknown_configuration_key(test_settings: Settings) -> None:
    assert_clear_error(artwatch("status", env={"ARTWATCH_MATCHNG__THRESHOLD": "0.3"}),
                       "unknown configuration key", "ARTWATCH_MATCHNG__THRESHOLD")


def test_unreachable_database(test_settings: Settings) -> None:
    port = _free_port()
    proc = artwatch("status", env={"ARTWATCH_DATABASE_URL": f"postgresql+psycopg://u:secret@127.0.0.1:{port}/x"})
    assert_clear_error(proc, "cannot reach the database", f"127.0.0.1:{port}")
    assert "secret" not in proc.stderr


def test_unreachable_redis(test_settings: Settings) -> None:
    artwatch("init")
    port = _free_port()
    proc = artwatch("crawl", env={"ARTWATCH_BROKER_URL": f"redis://127.0.0.1:{port}/0"})
    assert_clear_error(proc, "cannot reach the broker", f"127.0.0.1:{port}")


def test_works_import_reports_bad_lines_and_keeps_the_rest(test_settings: Settings, tmp_path: Path) -> None:
    from workers.demo import painting

    artwatch("init")
    (tmp_path / "works").mkdir()
    painting(1).save(tmp_path / "works" / "a.png")
    painting(2).save(tmp_path / "works" / "b.png")
    manifest = tmp_path / "works.jsonl"
    manifest.write_text(
        '{"id": "w1", "file": "works/a.png", "kind": "artwork", "owner": "o01", "title": "A"}\n'
        "not json\n"
        '{"id": "w2", "file": "works/b.png", "kind": "logo", "owner": "o02", "title": "B"}\n'
        '{"id": "w3", "file": "works/missing.png", "owner": "o01"}\n'
    )
    proc = artwatch("works", "import", str(manifest))
    assert proc.returncode == 1, proc.stderr
    assert "imported 2 works, 2 failed" in proc.stdout
    assert "works.jsonl:2:" in proc.stderr and "works.jsonl:4:" in proc.stderr and "missing.png" in proc.stderr
    listed = artwatch("works", "list", "--json").stdout.splitlines()
    import json

    rows = sorted((r["external_id"], r["kind"], r["owner"]) for r in map(json.loads, listed))
    assert rows == [("w1", "artwork", "o01@owners.invalid"), ("w2", "logo", "o02@owners.invalid")]
    # Importing again updates the same works instead of adding new ones.
    artwatch("works", "import", str(manifest))
    assert len(artwatch("works", "list", "--json").stdout.splitlines()) == 2
