"""The one contract every DocumentStore passes: DATA_DIR files, and the SQL table on SQLite and PostgreSQL.

Each backend is built from settings by ``build_document_store``, the way the
engine, the web app and the workers build theirs. "Two processes race" is two
real processes that both connect first and then put at the same moment; in
"services" mode they have different DATA_DIRs and share only the database.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import Settings, load_settings
from storage.documents import (
    CALIBRATION,
    DOCUMENT_NAMES,
    HOSTS_OVERRIDE,
    SECRET_KEY,
    DocumentCache,
    DocumentStore,
    FolderDocumentStore,
    SqlDocumentStore,
    build_document_store,
)


@dataclass
class Backend:
    name: str
    root: Path
    env: dict[str, str]  # shared by every process of this backend; each adds its own DATA_DIR

    def settings(self, data_dir: Path) -> Settings:
        shared = {"kind": self.env["ARTWATCH_SHARED__KIND"]}
        return load_settings(data_dir=data_dir, database_url=self.env.get("ARTWATCH_DATABASE_URL", ""),
                             shared=shared)

    def store(self, data_dir: Path | None = None) -> DocumentStore:
        return build_document_store(self.settings(data_dir or self.root / "data"))


def _create_schema(url: str) -> None:
    from storage.db import make_engine
    from storage.models import Base

    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()


@pytest.fixture(params=["folder", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "folder":
        return Backend("folder", tmp_path, {"ARTWATCH_SHARED__KIND": "folder"})
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    _create_schema(url)
    return Backend(request.param, tmp_path, {"ARTWATCH_SHARED__KIND": "services", "ARTWATCH_DATABASE_URL": url})


def test_the_kind_chooses_the_store(backend: Backend) -> None:
    store = backend.store()
    assert isinstance(store, FolderDocumentStore if backend.name == "folder" else SqlDocumentStore)
    assert store == backend.store() and hash(store) == hash(backend.store())


def test_missing_document(backend: Backend) -> None:
    store = backend.store()
    for name in DOCUMENT_NAMES:
        assert store.get(name) is None
        assert store.version(name) is None
    store.delete(CALIBRATION)  # deleting what is not there is no error
    assert store.get(CALIBRATION) is None


def test_put_get_and_the_version_changes_on_every_put(backend: Backend) -> None:
    store = backend.store()
    first = store.put(CALIBRATION, b'{"threshold": 0.5}')
    doc = store.get(CALIBRATION)
    assert doc is not None and doc.data == b'{"threshold": 0.5}' and doc.version == first
    assert store.version(CALIBRATION) == first
    # The same bytes again, at once: still a new version, so no reader keeps a stale parse.
    second = store.put(CALIBRATION, b'{"threshold": 0.5}')
    third = store.put(CALIBRATION, b'{"threshold": 0.7}')
    assert len({first, second, third}) == 3
    doc = store.get(CALIBRATION)
    assert doc is not None and doc.data == b'{"threshold": 0.7}' and store.version(CALIBRATION) == third
    assert store.get(HOSTS_OVERRIDE) is None  # names are independent


def test_binary_data_round_trips(backend: Backend) -> None:
    store = backend.store()
    data = bytes(range(256)) * 64
    store.put(HOSTS_OVERRIDE, data)
    doc = store.get(HOSTS_OVERRIDE)
    assert doc is not None and doc.data == data


def test_delete(backend: Backend) -> None:
    store = backend.store()
    store.put(HOSTS_OVERRIDE, b"x")
    store.put(CALIBRATION, b"y")
    store.delete(HOSTS_OVERRIDE)
    assert store.get(HOSTS_OVERRIDE) is None and store.version(HOSTS_OVERRIDE) is None
    doc = store.get(CALIBRATION)
    assert doc is not None and doc.data == b"y"


@pytest.mark.parametrize("name", ["", "other.json", "../calibration.json", "calibration.json/x", "WEB_SECRET_KEY"])
def test_invalid_name_is_rejected(backend: Backend, name: str) -> None:
    store = backend.store()
    for call in (lambda: store.get(name), lambda: store.version(name), lambda: store.put(name, b"x"),
                 lambda: store.put_if_absent(name, b"x"), lambda: store.delete(name)):
        with pytest.raises(ValueError, match="unknown shared document"):
            call()
    if backend.name == "folder":
        assert sorted(p.name for p in backend.root.iterdir()) == []


def test_put_if_absent_keeps_the_first(backend: Backend) -> None:
    store = backend.store()
    assert store.put_if_absent(SECRET_KEY, b"first") == b"first"
    assert store.put_if_absent(SECRET_KEY, b"second") == b"first"
    doc = store.get(SECRET_KEY)
    assert doc is not None and doc.data == b"first"


def test_cache_parses_once_per_version(backend: Backend) -> None:
    store = backend.store()
    parsed: list[bytes] = []

    def parse(data: bytes) -> str:
        parsed.append(data)
        return data.decode()

    cache = DocumentCache(store, CALIBRATION, parse, lambda: "none")
    assert cache.get() == "none"
    store.put(CALIBRATION, b"a")
    assert cache.get() == "a" and cache.get() == "a"
    assert parsed == [b"a"]
    store.put(CALIBRATION, b"a")  # same bytes, new version: parsed again
    assert cache.get() == "a" and parsed == [b"a", b"a"]
    other = backend.store(backend.root / "elsewhere") if backend.name != "folder" else store
    other.put(CALIBRATION, b"b")  # another process's put (another DATA_DIR in services mode)
    assert cache.get() == "b"
    store.delete(CALIBRATION)
    assert cache.get() == "none"


_RACER = """
import sys, time
from pathlib import Path
from config.settings import load_settings
from storage.documents import SECRET_KEY, build_document_store
store = build_document_store(load_settings())
store.version(SECRET_KEY)  # connected, and the engine warm
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.0005)
print(store.put_if_absent(SECRET_KEY, sys.argv[3].encode()).decode())
"""


def test_put_if_absent_race_between_two_processes(backend: Backend) -> None:
    go = backend.root / "go"
    racers = []
    for i in range(2):
        # Folder processes share DATA_DIR (that is the folder store); services ones do not.
        data_dir = backend.root / ("data" if backend.name == "folder" else f"data{i}")
        env = {**os.environ, **backend.env, "ARTWATCH_DATA_DIR": str(data_dir)}
        racers.append(subprocess.Popen(
            [sys.executable, "-c", _RACER, str(backend.root / f"ready{i}"), str(go), f"key-of-racer-{i}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 60
    while not all((backend.root / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in racers), [
            p.communicate()[1].decode(errors="replace") for p in racers if p.poll() is not None]
        time.sleep(0.005)
    go.touch()
    outs = [p.communicate(timeout=60) for p in racers]
    for p, (_, err) in zip(racers, outs, strict=True):
        assert p.returncode == 0, err.decode(errors="replace")
    keys = {out.decode().strip() for out, _ in outs}
    assert len(keys) == 1 and keys <= {"key-of-racer-0", "key-of-racer-1"}, keys
    doc = backend.store().get(SECRET_KEY)
    assert doc is not None and doc.data.decode() in keys
    if backend.name == "folder":
        # The file, mode 0600, and no temporary files left behind.
        files = sorted(p.name for p in (backend.root / "data").iterdir())
        assert files == [SECRET_KEY], files
        assert stat.S_IMODE((backend.root / "data" / SECRET_KEY).stat().st_mode) == 0o600
    else:
        assert not any((backend.root / f"data{i}").exists() for i in range(2))


# ------------------------------------------------------------------ folder only


def test_folder_store_keeps_todays_files(tmp_path: Path) -> None:
    """Same names and places as before the store: DATA_DIR/calibration.json and friends."""
    store = FolderDocumentStore(tmp_path)
    store.put(CALIBRATION, b"{}")
    store.put(HOSTS_OVERRIDE, b"[hosts]\n")
    store.put_if_absent(SECRET_KEY, b"k")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CALIBRATION, HOSTS_OVERRIDE, SECRET_KEY])
    assert (tmp_path / CALIBRATION).read_bytes() == b"{}"
    assert stat.S_IMODE((tmp_path / SECRET_KEY).stat().st_mode) == 0o600
    # A file written by hand (or by an older artwatch) is read as it is.
    (tmp_path / CALIBRATION).write_bytes(b'{"threshold": 0.6}')
    doc = store.get(CALIBRATION)
    assert doc is not None and doc.data == b'{"threshold": 0.6}' and doc.version == store.version(CALIBRATION)
