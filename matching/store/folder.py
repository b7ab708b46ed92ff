"""The feature store as files under one folder (``DIR`` = ``settings.data_dir/features``).

- ``works/<id>.npz``: the work's keypoints and descriptors (source of truth);
- ``vocab.npz``: the vocabulary, with a version id;
- ``journal.log``: the change feed, append-only lines written under
  ``journal.lock``; a cursor is a byte offset in it;
- ``snapshots/<version>.json`` and ``snapshots/<version>-<offset>-<id>/``:
  a vocabulary's current snapshot pointer and the snapshots' arrays (one
  ``.npy`` each). The postings arrays are memory-mapped copy-on-write, so
  processes on one machine share the pages;
- ``<name>.lock``: the named locks (portalocker), e.g. ``retrain.lock``,
  ``snapshot.lock``.

Every process on the machine shares the folder; nothing else is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import portalocker

from matching.features import StoredWork
from matching.store import Locked, thumbs_from_bytes, work_from_bytes, work_to_bytes

__all__ = ["FolderFeatureStore"]

U8 = npt.NDArray[np.uint8]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FolderFeatureStore:
    """Per-work feature files plus the journal other processes replay."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.works_dir = root / "works"
        self.works_dir.mkdir(parents=True, exist_ok=True)
        self.journal = root / "journal.log"
        self.lock_path = root / "journal.lock"
        self.vocab_path = root / "vocab.npz"
        self.snapshots_dir = root / "snapshots"

    def lock_file(self, name: str) -> Path:
        """The file behind the lock ``name``."""
        if not name or any(c in name for c in "/\\.") :
            raise ValueError(f"not a lock name: {name!r}")
        return self.root / f"{name}.lock"

    def snapshot_pointer(self, version: str) -> Path:
        """The file naming the current snapshot made under vocabulary ``version``."""
        return self.snapshots_dir / f"{version}.json"

    def path(self, work_id: int) -> Path:
        return self.works_dir / f"{int(work_id)}.npz"

    # ---- work arrays

    def put_work(self, work: StoredWork) -> None:
        _atomic_write(self.path(work.work_id), work_to_bytes(work))

    def get_work(self, work_id: int) -> StoredWork | None:
        try:
            return work_from_bytes(self.path(work_id))
        except FileNotFoundError:
            return None

    def get_thumbs(self, work_id: int) -> U8:
        try:
            return thumbs_from_bytes(self.path(work_id))
        except FileNotFoundError:
            return np.zeros((0, 0, 0), np.uint8)

    def remove_work(self, work_id: int) -> None:
        self.path(work_id).unlink(missing_ok=True)

    def work_ids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.works_dir.glob("*.npz"))

    # ---- change feed

    def append(self, lines: Sequence[str]) -> int:
        text = "".join(f"{line}\n" for line in lines)
        with portalocker.Lock(str(self.lock_path), timeout=60), \
                open(self.journal, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            return fh.tell()

    def end(self) -> int:
        try:
            return self.journal.stat().st_size
        except FileNotFoundError:
            return 0

    def changes(self, after: int) -> tuple[list[str], int]:
        size = self.end()
        if size <= after:
            return [], after
        with open(self.journal, "rb") as fh:
            fh.seek(after)
            chunk = fh.read(size - after)
        end = chunk.rfind(b"\n")
        if end < 0:
            return [], after
        return chunk[: end + 1].decode("utf-8").splitlines(), after + end + 1

    # ---- vocabulary

    def get_vocab(self) -> bytes | None:
        try:
            return self.vocab_path.read_bytes()
        except FileNotFoundError:
            return None

    def publish_vocab(self, data: bytes, version: str, works: int) -> int:
        with portalocker.Lock(str(self.lock_path), timeout=600):
            _atomic_write(self.vocab_path, data)
            with open(self.journal, "a", encoding="utf-8") as fh:
                fh.write(f"vocab {version} {works}\n")
                fh.flush()
                return fh.tell()

    # ---- snapshots

    def snapshot_meta(self, version: str) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.snapshot_pointer(version).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def put_snapshot(self, version: str, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any]) -> str:
        name = f"{version}-{int(meta['offset'])}-{uuid.uuid4().hex[:8]}"
        self.snapshots_dir.mkdir(exist_ok=True)
        tmp = self.snapshots_dir / f".{name}.tmp"
        tmp.mkdir()
        try:
            for key, arr in arrays.items():
                np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, self.snapshots_dir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic_write(self.snapshot_pointer(version), json.dumps({**meta, "dir": name}).encode())
        return name

    def get_snapshot(self, version: str, mapped: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        meta = json.loads(self.snapshot_pointer(version).read_text(encoding="utf-8"))
        d = self.snapshots_dir / str(meta["dir"])
        arrays: dict[str, Any] = {}
        for f in d.glob("*.npy"):
            # Copy-on-write mapping: pages stay shared between processes
            # (nothing writes to a segment's arrays).
            a = np.load(f, mmap_mode="c" if f.stem in mapped else None, allow_pickle=False)
            arrays[f.stem] = np.asarray(a)  # a plain ndarray (a view of the mapping when mapped)
        if not arrays:
            raise FileNotFoundError(d)
        return meta, arrays

    def remove_snapshots(self, version: str, stale: Collection[str]) -> None:
        current = (self.snapshot_meta(version) or {}).get("dir")
        if not self.snapshots_dir.exists():
            return
        for old in self.snapshots_dir.iterdir():
            owner = old.name.lstrip(".").split("-")[0].split(".")[0]
            if (owner == version and old.is_dir() and old.name != current) or owner in stale:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)

    # ---- locks

    @contextmanager
    def lock(self, name: str, *, timeout: float, wait: bool = True) -> Iterator[None]:
        try:
            held = portalocker.Lock(str(self.lock_file(name)), timeout=timeout if wait else 0,
                                    fail_when_locked=not wait)
            held.acquire()
        except portalocker.LockException as exc:
            raise Locked(f"the feature store's {name!r} lock is held by another process") from exc
        try:
            yield
        finally:
            held.release()
