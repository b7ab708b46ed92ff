"""Known failures print one clear line and exit 2: never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from config.settings import Settings
from tests.cli_process import artwatch, assert_clear_error, assert_quiet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_command_has_help(test_settings: Settings) -> None:
    from workers.cli import cli

    def walk(cmd: click.Command, path: list[str]) -> Iterator[list[str]]:
        yield path
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
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


def test_lazy_commands_list_their_own_help() -> None:
    """``--help`` shows the mounted commands' help without importing them; it must be theirs."""
    import importlib

    from workers.cli import _LAZY

    for name, (module, attr, short_help) in _LAZY.items():
        command = getattr(importlib.import_module(module), attr)
        assert command.name == name
        assert command.get_short_help_str(200) == short_help, name


def test_help_and_listing_import_no_engine_web_app_or_torch(test_settings: Settings) -> None:
    """The cheap commands stay cheap: no torch, no matching engine, no web app, no crawler."""
    assert artwatch("init").returncode == 0
    heavy = ("torch", "open_clip", "cv2", "numba", "matching", "webapp", "crawler", "fastapi", "celery")
    script = (
        "import sys\n"
        "from workers.cli import cli\n"
        "for args in (['--help'], ['works', 'list'], ['works', '--help']):\n"
        "    try:\n"
        "        cli.main(args, prog_name='artwatch', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"heavy = {heavy!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


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
    proc = artwatch("works", "add", str(path), "--owner", "o@example.com", "--create-owner")
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


def _owner_and_image(tmp_path: Path, n: int = 1) -> Path:
    from workers.demo import painting

    assert artwatch("init").returncode == 0
    assert artwatch("owners", "set", "ada@studio.example", "--legal-name", "Ada Studio", "--address", "1 High St",
                    "--phone", "+1 555 0100").returncode == 0
    path = tmp_path / f"work{n}.png"
    painting(n).save(path)
    return path


def test_works_add_refuses_an_unknown_owner_unless_asked_to_create_it(test_settings: Settings,
                                                                      tmp_path: Path) -> None:
    image = _owner_and_image(tmp_path)
    proc = artwatch("works", "add", str(image), "--owner", "ada@studio.exmaple")
    assert_clear_error(proc, "no owner ada@studio.exmaple", "--create-owner")
    assert "ada@studio.exmaple" not in artwatch("owners", "list").stdout
    assert "no works registered" in artwatch("works", "list").stdout
    proc = artwatch("works", "add", str(image), "--owner", "new@studio.example", "--create-owner")
    assert proc.returncode == 0 and "for new@studio.example" in proc.stdout, proc.stderr
    assert "created owner new@studio.example" in proc.stderr and "owners set" in proc.stderr
    assert "new@studio.example" in artwatch("owners", "list").stdout


def test_works_remove_asks_first(test_settings: Settings, tmp_path: Path) -> None:
    image = _owner_and_image(tmp_path)
    for n in (1, 2):
        assert artwatch("works", "add", str(image), "--owner", "ada@studio.example", "--id", f"w{n}").returncode == 0
    for answer in ("", "n\n"):  # no answer on stdin (not a terminal), then a no
        proc = artwatch("works", "remove", "1", input=answer)
        assert_clear_error(proc, "work 1 not removed", "--yes")
        assert "remove work 1 'work1.png' and its 0 matches? [y/N]" in proc.stdout
    assert len(artwatch("works", "list", "--json").stdout.splitlines()) == 2
    proc = artwatch("works", "remove", "1", input="y\n")
    assert proc.returncode == 0 and "removed work 1" in proc.stdout, proc.stderr
    proc = artwatch("works", "remove", "2", "--yes")
    assert proc.returncode == 0 and proc.stdout == "removed work 2\n", proc.stdout
    assert "no works registered" in artwatch("works", "list").stdout
    assert_clear_error(artwatch("works", "remove", "2", "--yes"), "no work with id 2")


def test_healthy_commands_print_nothing_on_stderr(test_settings: Settings, tmp_path: Path) -> None:
    """At the default log level: no index-snapshot INFO lines, no kombu warning."""
    assert_quiet(artwatch("init"))
    assert_quiet(artwatch("owners", "set", "ada@studio.example", "--legal-name", "Ada Studio"))
    from workers.demo import painting

    for n in (1, 2):  # the first trains the vocabulary and writes a snapshot, the second restores it
        painting(n).save(tmp_path / f"{n}.png")
        assert_quiet(artwatch("works", "add", str(tmp_path / f"{n}.png"), "--owner", "ada@studio.example"))
    assert_quiet(artwatch("works", "list"))
    assert_quiet(artwatch("sources", "add", "feed", "rss", "http://127.0.0.1:9/feed.xml"))
    assert_quiet(artwatch("crawl"))  # publishes a task on the folder broker
    proc = artwatch("status")
    assert_quiet(proc)
    assert "crawl 1" in proc.stdout
    # Our own INFO records are still there for whoever asks for them.
    painting(3).save(tmp_path / "3.png")
    verbose = artwatch("-v", "works", "add", str(tmp_path / "3.png"), "--owner", "ada@studio.example")
    assert verbose.returncode == 0 and "INFO matching.replica: local index:" in verbose.stderr, verbose.stderr
