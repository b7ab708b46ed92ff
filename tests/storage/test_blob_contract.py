"""The one contract every BlobStore passes: the folder store and the S3 store.

The S3 store runs against a real S3 server on 127.0.0.1 (moto's standalone
server, or ``ARTWATCH_TEST_S3_URL``; see tests/conftest.py), each test in a
bucket of its own. "Down" is a real closed port, a real server killed, and a
real TCP connection cut halfway through a 50 MB upload (a proxy on
127.0.0.1); for the folder store, a folder that cannot exist and a disk that
fills up (/dev/full). "Put twice by two processes" is two real processes
released at the same moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, load_settings
from storage.blobs import (
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobStoreUnavailable,
    FolderBlobStore,
    build_blob_store,
)
from storage.blobs_s3 import S3BlobStore
from tests.conftest import S3Server

MB = 1024 * 1024


@dataclass
class Backend:
    """One implementation under test, and the means to break it."""

    name: str
    settings: Settings
    env: dict[str, str]  # what a subprocess needs to build the same store from its settings
    listing: Callable[[], list[str]]  # every stored thing, finished or not (files, object keys)
    unreachable: Callable[[], tuple[BlobStore, str]]  # a store that cannot be used, and where it points
    cut: Callable[[int], contextlib.AbstractContextManager[BlobStore]]  # writes break after N bytes

    def store(self) -> BlobStore:
        return build_blob_store(self.settings)


class CutProxy:
    """A TCP proxy on 127.0.0.1 that passes ``limit`` bytes of each request
    stream upstream and then closes both sides, like a server dying mid-upload."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.upstream_port = upstream_port
        self.limit = limit
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.cuts = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(client, upstream, self.limit), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if limit is not None and sent + len(chunk) > limit:
                    dst.sendall(chunk[: limit - sent])
                    self.cuts += 1
                    break
                dst.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _folder_backend(settings: Settings, tmp_path: Path) -> Backend:
    root = settings.blob_dir()

    def listing() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def unreachable() -> tuple[BlobStore, str]:
        blocker = tmp_path / "not-a-folder"
        blocker.write_bytes(b"")
        return FolderBlobStore(blocker / "blobs"), str(blocker)

    @contextlib.contextmanager
    def cut(after: int) -> Iterator[BlobStore]:
        # A disk that fills up: every write of the blob goes to /dev/full.
        real_fdopen = os.fdopen

        def full_fdopen(fd: int, *a: Any, **k: Any) -> Any:
            os.close(fd)
            return real_fdopen(os.open("/dev/full", os.O_WRONLY), *a, **k)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "fdopen", full_fdopen)
            yield build_blob_store(settings)

    env = {"ARTWATCH_DATA_DIR": str(settings.data_dir)}
    return Backend("folder", settings, env, listing, unreachable, cut)


def _s3_backend(settings: Settings, env: dict[str, str], tmp_path: Path) -> Backend:
    direct = build_blob_store(settings)
    assert isinstance(direct, S3BlobStore)
    endpoint = settings.blobs.endpoint_url

    def listing() -> list[str]:
        pages = direct.client.get_paginator("list_objects_v2").paginate(Bucket=direct.bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        uploads = direct.client.list_multipart_uploads(Bucket=direct.bucket).get("Uploads", [])
        return sorted(keys + [f"(unfinished multipart) {u['Key']}" for u in uploads])

    def pointed_at(url: str, **kw: Any) -> BlobStore:
        blobs = settings.blobs.model_copy(update={"endpoint_url": url, "max_attempts": 2, **kw})
        return build_blob_store(settings.model_copy(update={"blobs": blobs}))

    def unreachable() -> tuple[BlobStore, str]:
        url = f"http://127.0.0.1:{_closed_port()}"
        return pointed_at(url), url

    @contextlib.contextmanager
    def cut(after: int) -> Iterator[BlobStore]:
        port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
        proxy = CutProxy(port, after)
        try:
            yield pointed_at(f"http://127.0.0.1:{proxy.port}")
            assert proxy.cuts > 0, "the proxy never cut a connection: the test did not test a cut"
        finally:
            proxy.close()

    return Backend("s3", settings, env, listing, unreachable, cut)


@pytest.fixture
def s3_backend(request: pytest.FixtureRequest, test_settings: Settings, tmp_path: Path) -> Backend:
    env: dict[str, str] = request.getfixturevalue("s3_env")  # after test_settings, which clears ARTWATCH_*
    env = {**env, "ARTWATCH_DATA_DIR": str(test_settings.data_dir)}
    return _s3_backend(load_settings(), env, tmp_path)


@pytest.fixture(params=["folder", "s3"])
def backend(request: pytest.FixtureRequest, test_settings: Settings, tmp_path: Path) -> Backend:
    if request.param == "folder":
        return _folder_backend(test_settings, tmp_path)
    return request.getfixturevalue("s3_backend")  # type: ignore[no-any-return]


# ------------------------------------------------------------------ the contract


def test_put_get_exists_delete(backend: Backend) -> None:
    store = backend.store()
    data = b"\x89PNG not really an image"
    sha = store.put(data)
    assert store.exists(sha)
    assert store.get(sha) == data
    store.delete(sha)
    assert not store.exists(sha)
    with pytest.raises(BlobNotFound):
        store.get(sha)
    assert backend.listing() == []
    store.delete(sha)  # deleting what is gone is not an error


def test_content_addressed_and_idempotent(backend: Backend) -> None:
    store = backend.store()
    a, b = b"first blob", b"second blob"
    sha_a = store.put(a)
    assert sha_a == hashlib.sha256(a).hexdigest()
    assert store.put(a) == sha_a
    sha_b = store.put(b)
    assert sha_b == hashlib.sha256(b).hexdigest() != sha_a
    assert (store.get(sha_a), store.get(sha_b)) == (a, b)
    assert len(backend.listing()) == 2, backend.listing()  # the second put of `a` stored nothing new
    # Another store built from the same settings (another process, another node) sees them.
    assert backend.store().get(sha_b) == b


def test_fifty_megabytes(backend: Backend) -> None:
    store = backend.store()
    data = os.urandom(50 * MB)
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.get(sha) == data
    assert backend.listing() and len(backend.listing()) == 1


def test_missing_key(backend: Backend) -> None:
    store = backend.store()
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(missing)
    with pytest.raises(BlobNotFound) as info:
        store.get(missing)
    assert isinstance(info.value, KeyError)
    with pytest.raises(BlobStoreError, match="not a SHA-256"):
        store.get("../../etc/passwd")
    with pytest.raises(BlobStoreError, match="not a SHA-256"):
        store.exists(missing[:10])


def test_store_down_is_a_clear_error(backend: Backend) -> None:
    store, where = backend.unreachable()
    with pytest.raises(BlobStoreError, match=r"cannot store blob [0-9a-f]{12}") as put_err:
        store.put(b"lost")
    assert where in str(put_err.value)
    with pytest.raises(BlobStoreError) as get_err:
        store.get(hashlib.sha256(b"lost").hexdigest())
    assert not isinstance(get_err.value, BlobNotFound)  # down is not "missing"
    assert where in str(get_err.value)
    with pytest.raises(BlobStoreError):
        store.check()
    if backend.name == "s3":  # a network failure: tasks retry it (ConnectionError is in their TRANSIENT)
        assert isinstance(put_err.value, BlobStoreUnavailable)
        assert isinstance(put_err.value, ConnectionError)
    assert backend.listing() == []


def test_write_cut_halfway_leaves_nothing(backend: Backend) -> None:
    data = os.urandom(50 * MB)
    sha = hashlib.sha256(data).hexdigest()
    with backend.cut(4 * MB) as broken, pytest.raises(BlobStoreError, match=sha[:12]):
        broken.put(data)
    store = backend.store()
    assert not store.exists(sha)
    assert backend.listing() == []
    assert store.put(data) == sha  # and the store still works
    assert store.get(sha) == data


_RACER = """
import os, sys, time
from config.settings import load_settings
from storage.blobs import build_blob_store
store = build_blob_store(load_settings())
data = open(sys.argv[1], "rb").read()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
print(store.put(data))
"""


def test_same_blob_put_by_two_processes(backend: Backend, tmp_path: Path) -> None:
    data = os.urandom(8 * MB)
    sha = hashlib.sha256(data).hexdigest()
    src, go = tmp_path / "blob.bin", tmp_path / "go"
    src.write_bytes(data)
    env = {**os.environ, **backend.env}
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(src), str(go)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    go.touch()  # both were waiting: they put at the same moment
    outs = [p.communicate(timeout=120) for p in racers]
    for p, (out, err) in zip(racers, outs, strict=True):
        assert p.returncode == 0, err.decode(errors="replace")
        assert out.decode().strip() == sha
    store = backend.store()
    assert store.get(sha) == data
    assert len(backend.listing()) == 1, backend.listing()  # one blob, no temporary leftovers


# ------------------------------------------------------------------ S3 only


def test_s3_server_killed(test_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server dies under a running store: reads and writes fail clearly, and a
    store that comes back (here a new server) is usable without restarting the client."""
    from tests.conftest import make_bucket, s3_credentials

    server = S3Server(tmp_path / "moto.log").start()
    try:
        for k, v in s3_credentials().items():
            monkeypatch.setenv(k, v)
        blobs = test_settings.blobs.model_copy(update={
            "kind": "s3", "url": f"s3://{make_bucket(server.url)}/p", "endpoint_url": server.url,
            "region": "us-east-1", "max_attempts": 2})
        store = build_blob_store(test_settings.model_copy(update={"blobs": blobs}))
        sha = store.put(b"kept")
        server.stop()
        with pytest.raises(BlobStoreUnavailable, match=f"cannot read blob {sha[:12]}.*{server.url}"):
            store.get(sha)
        with pytest.raises(BlobStoreUnavailable, match="cannot store blob"):
            store.put(b"more")
    finally:
        server.stop()


def test_s3_settings_errors(test_settings: Settings) -> None:
    for url, why in [("", "blobs.url is empty"), ("bucket/prefix", "s3://bucket/prefix"),
                     ("s3:///prefix", "s3://bucket/prefix")]:
        blobs = test_settings.blobs.model_copy(update={"kind": "s3", "url": url})
        with pytest.raises(BlobStoreError, match=why):
            build_blob_store(test_settings.model_copy(update={"blobs": blobs}))


def test_s3_missing_bucket_is_a_clear_error(s3_backend: Backend) -> None:
    settings = s3_backend.settings
    blobs = settings.blobs.model_copy(update={"url": "s3://no-such-bucket-artwatch/x"})
    store = build_blob_store(settings.model_copy(update={"blobs": blobs}))
    with pytest.raises(BlobStoreError, match="no-such-bucket-artwatch"):
        store.check()
    with pytest.raises(BlobStoreError, match="NoSuchBucket"):
        store.put(b"x")
