"""External work ids are each owner's own names, and owner emails are single addresses (issue 16, items 8 and 10).

Through the real ``artwatch`` command line, in subprocesses, on the embedded
defaults (SQLite, folder blobs, in-process index)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from config.settings import Settings
from registry.service import PipelineError, normalise_email
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Account, Base, Work, WorkKind
from tests.cli_process import artwatch, assert_clear_error


def _listed() -> list[dict[str, object]]:
    return [json.loads(line) for line in artwatch("works", "list", "--json").stdout.splitlines()]


def test_a_second_owner_reusing_an_id_gets_a_work_of_their_own(test_settings: Settings, tmp_path: Path) -> None:
    from workers.demo import painting

    assert artwatch("init").returncode == 0
    painting(1).save(tmp_path / "ann.png")
    painting(2).save(tmp_path / "bob.png")
    ann = artwatch("works", "add", str(tmp_path / "ann.png"), "--owner", "ann@example.com", "--id", "logo",
                   "--create-owner")
    assert ann.returncode == 0, ann.stderr
    bob = artwatch("works", "add", str(tmp_path / "bob.png"), "--owner", "bob@example.com", "--id", "logo",
                   "--create-owner")
    assert bob.returncode == 0, bob.stderr
    rows = sorted((r["owner"], r["external_id"], r["title"]) for r in _listed())
    assert rows == [("ann@example.com", "logo", "ann.png"), ("bob@example.com", "logo", "bob.png")]

    # Re-adding under the same owner still updates that owner's work in place.
    again = artwatch("works", "add", str(tmp_path / "bob.png"), "--owner", "bob@example.com", "--id", "logo",
                     "--title", "Bob's mark")
    assert again.returncode == 0, again.stderr
    titles = sorted((str(r["owner"]), str(r["title"])) for r in _listed())
    assert titles == [("ann@example.com", "ann.png"), ("bob@example.com", "Bob's mark")]

    # Removing by external id needs the owner, and takes only that owner's work.
    assert_clear_error(artwatch("works", "remove", "logo"), "--owner")
    removed = artwatch("works", "remove", "logo", "--owner", "bob@example.com", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert [(r["owner"], r["title"]) for r in _listed()] == [("ann@example.com", "ann.png")]
    assert_clear_error(artwatch("works", "remove", "logo", "--owner", "bob@example.com", "--yes"),
                       "no work with id 'logo'")


def test_an_import_manifest_scopes_ids_by_owner(test_settings: Settings, tmp_path: Path) -> None:
    from workers.demo import painting

    artwatch("init")
    (tmp_path / "works").mkdir()
    painting(1).save(tmp_path / "works" / "a.png")
    painting(2).save(tmp_path / "works" / "b.png")
    manifest = tmp_path / "works.jsonl"
    manifest.write_text(
        '{"id": "w1", "file": "works/a.png", "kind": "artwork", "owner": "o01", "title": "A"}\n'
        '{"id": "w1", "file": "works/b.png", "kind": "logo", "owner": "o02", "title": "B"}\n'
        '{"id": "w2", "file": "works/b.png", "owner": "x@evil.test,o03"}\n'
    )
    proc = artwatch("works", "import", str(manifest))
    assert "imported 2 works, 1 failed" in proc.stdout, (proc.stdout, proc.stderr)
    assert "works.jsonl:3:" in proc.stderr and "may use only letters" in proc.stderr
    rows = sorted((r["owner"], r["external_id"], r["title"]) for r in _listed())
    assert rows == [("o01@owners.invalid", "w1", "A"), ("o02@owners.invalid", "w1", "B")]
    # A placeholder owner's profile can still be completed by the address it was given.
    profile = artwatch("owners", "set", "o01@owners.invalid", "--legal-name", "Owner One")
    assert profile.returncode == 0 and "o01@owners.invalid" in profile.stdout, profile.stderr


@pytest.mark.parametrize("bad", ["ann@example.com, eve@evil.test", "ann@example.com;eve@evil.test",
                                 "Ann <ann@example.com>", "ann@example.com\r\nBcc: eve@evil.test",
                                 '"ann,eve"@example.com', "not-an-address", "ann@[127.0.0.1]", ""])
def test_normalise_email_refuses_anything_but_one_address(bad: str) -> None:
    with pytest.raises(PipelineError, match="not a single email address"):
        normalise_email(bad)


def test_normalise_email_lowercases_one_address() -> None:
    assert normalise_email(" Ann@Example.COM ") == "ann@example.com"
    assert normalise_email("rev@artwatch.test") == "rev@artwatch.test"


def test_owner_and_account_emails_must_be_one_valid_address(test_settings: Settings, tmp_path: Path) -> None:
    from workers.demo import painting

    artwatch("init")
    painting(1).save(tmp_path / "a.png")
    bad = "ann@example.com, eve@evil.test"
    assert_clear_error(artwatch("works", "add", str(tmp_path / "a.png"), "--owner", bad, "--create-owner"),
                       "not a single email address")
    assert_clear_error(artwatch("owners", "set", bad), "not a single email address")
    users = artwatch("users", "add", bad, "--password-stdin")
    assert users.returncode == 2 and "not a single email address" in users.stderr, users.stderr
    assert "no works registered" in artwatch("works", "list").stdout
    ok = artwatch("owners", "set", "Ann@Example.COM")
    assert ok.returncode == 0 and "ann@example.com" in ok.stdout, ok.stderr


def test_scan_names_a_shared_external_id_with_its_owner(test_settings: Settings) -> None:
    """Predictions name works by external id; an id two owners share is qualified by the owner."""
    from matching.cli import _work_names

    engine = make_engine(test_settings.resolved_database_url())
    test_settings.data_dir.mkdir(parents=True, exist_ok=True)
    Base.metadata.create_all(engine)
    with session_scope(make_sessionmaker(engine)) as s:
        ann = Account(email="ann@example.com")
        bob = Account(email="bob@example.com", external_id="o02")
        s.add_all([ann, bob])
        s.flush()
        for owner, ext in ((ann, "logo"), (bob, "logo"), (bob, "w0001"), (ann, None)):
            s.add(Work(owner_id=owner.id, external_id=ext, kind=WorkKind.LOGO, blob_sha256="a" * 64))
    with session_scope(make_sessionmaker(engine)) as s:
        ids = {(w.owner_id, w.external_id): w.id for w in s.scalars(select(Work))}
    names = _work_names(make_sessionmaker(engine))
    engine.dispose()
    assert names == {
        ids[(1, "logo")]: "ann@example.com/logo",
        ids[(2, "logo")]: "o02/logo",
        ids[(2, "w0001")]: "w0001",
        ids[(1, None)]: str(ids[(1, None)]),
    }
