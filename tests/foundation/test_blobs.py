from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from storage.blobs import BlobNotFound, BlobStoreError, FolderBlobStore


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    data = b"\x89PNG fake bytes"
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.put(data) == sha
    assert store.get(sha) == data
    assert store.path(sha).parent.parent.name == sha[:2]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [store.path(sha)]


def test_missing_blob_and_bad_hash(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    with pytest.raises(BlobStoreError, match="not a SHA-256"):
        store.get("../../etc/passwd")


def test_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    """A tiny tmpfs is not available unprivileged everywhere; /dev/full is."""
    store = FolderBlobStore(tmp_path)
    data = b"y" * 1000
    sha = hashlib.sha256(data).hexdigest()
    target_dir = tmp_path / sha[:2] / sha[2:4]
    target_dir.mkdir(parents=True)
    real_fdopen = os.fdopen

    def full_fdopen(fd: int, *a: Any, **k: Any) -> Any:
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "fdopen", full_fdopen)
    try:
        with pytest.raises(BlobStoreError, match="disk is full"):
            store.put(data)
    finally:
        mp.undo()
    assert list(target_dir.iterdir()) == []
