"""The one composition root: ``registry.root.Services``."""

from __future__ import annotations

import os

from sqlalchemy import text

from config.settings import Settings
from registry.root import Services
from storage.blobs import FolderBlobStore
from storage.db import make_engine, make_sessionmaker


def test_nothing_is_built_until_used(test_settings: Settings) -> None:
    services = Services.build(test_settings)
    assert services._db is None and services._sessions is None and services._blobs is None
    assert not services.matcher_loaded
    assert not (test_settings.blob_dir()).exists()
    blobs = services.blobs
    assert blobs is services.blobs  # built once
    assert services.sessions is services.sessions
    assert services._db is services.db


def test_parts_passed_in_are_used_as_they_are(test_settings: Settings) -> None:
    test_settings.data_dir.mkdir(parents=True)
    engine = make_engine(test_settings.resolved_database_url())
    sessions = make_sessionmaker(engine)
    blobs = FolderBlobStore(test_settings.data_dir / "elsewhere")
    matcher = object()
    services = Services.build(test_settings, sessions=sessions, blobs=blobs, matcher=matcher)  # type: ignore[arg-type]
    assert services.sessions is sessions and services.db is engine and services.blobs is blobs
    assert services.matcher is matcher
    engine.dispose()


def test_a_forked_child_builds_its_own(test_settings: Settings) -> None:
    test_settings.data_dir.mkdir(parents=True)
    services = Services.build(test_settings)
    with services.sessions() as s:
        assert s.execute(text("SELECT 1")).scalar() == 1
    parent_db = services.db
    assert services.for_this_process() is services
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        ok = False
        try:
            child = services.for_this_process()
            with child.sessions() as s:
                answered = s.execute(text("SELECT 1")).scalar() == 1
            ok = child is not services and child.db is not parent_db and child.pid == os.getpid() and answered
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and status == 0
    os.close(read)
    with services.sessions() as s:  # the parent's pool still works
        assert s.execute(text("SELECT 1")).scalar() == 1
    services.dispose()
