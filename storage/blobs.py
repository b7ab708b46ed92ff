"""Content-addressed blob store: image bytes keyed by their SHA-256.

Tasks carry ids and hashes, never bytes. A blob is written to a temporary file
in the same folder, flushed to disk and renamed into place, so a reader never
sees a half-written blob and a full disk leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

__all__ = ["BlobNotFound", "BlobStore", "BlobStoreError", "FolderBlobStore", "sha256_hex"]


class BlobStoreError(Exception):
    """A blob could not be stored or read (full disk, permissions, corruption)."""


class BlobNotFound(BlobStoreError, KeyError):
    """No blob has that hash."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store bytes; return their SHA-256. Idempotent."""

    def get(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def path(self, sha256: str) -> Path:
        """A local file path holding the blob (for tools that want a file)."""

    def delete(self, sha256: str) -> None: ...


class FolderBlobStore:
    """Blobs under ``root/ab/cd/abcd…`` (two levels of fan-out)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BlobStoreError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        target = self._path(digest)
        if target.exists():
            return digest
        tmp_name = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, target)
            tmp_name = None
        except OSError as exc:
            what = "the blob store's disk is full" if exc.errno == errno.ENOSPC else str(exc)
            raise BlobStoreError(f"cannot store blob {digest[:12]} under {self.root}: {what}") from exc
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
        return digest

    def get(self, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(sha256) from None
        except OSError as exc:
            raise BlobStoreError(f"cannot read blob {sha256[:12]}: {exc}") from exc

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).exists()

    def path(self, sha256: str) -> Path:
        p = self._path(sha256)
        if not p.exists():
            raise BlobNotFound(sha256)
        return p

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sha256).unlink()
