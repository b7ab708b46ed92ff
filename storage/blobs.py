"""Content-addressed blob store: image bytes keyed by their SHA-256.

Tasks carry ids and hashes, never bytes. Two implementations of one
:class:`BlobStore` role, chosen by ``[blobs] kind`` alone
(:func:`build_blob_store`):

- :class:`FolderBlobStore` (embedded default): files under ``DATA_DIR/blobs``.
  A blob is written to a temporary file in the same folder, flushed to disk
  and renamed into place, so a reader never sees a half-written blob and a
  full disk leaves nothing behind.
- :class:`storage.blobs_s3.S3BlobStore` (distributed): objects in any
  S3-compatible store (``blobs.url = "s3://bucket/prefix"``). One PUT per
  blob, which S3 makes visible whole or not at all.

Errors (every implementation raises only these):

- :class:`BlobStoreError`: a blob could not be stored or read.
  - :class:`BlobNotFound`: no blob has that hash (also a ``KeyError``).
  - :class:`BlobStoreUnavailable`: the store cannot be reached (S3 endpoint
    down, connection cut); also a ``ConnectionError``, so tasks retry it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "BlobStoreUnavailable",
    "FolderBlobStore",
    "build_blob_store",
    "check_sha256",
    "sha256_hex",
]


class BlobStoreError(Exception):
    """A blob could not be stored or read (full disk, permissions, corruption)."""


class BlobNotFound(BlobStoreError, KeyError):
    """No blob has that hash."""


class BlobStoreUnavailable(BlobStoreError, ConnectionError):
    """The store cannot be reached; nothing was stored. Worth retrying."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is a lowercase SHA-256 hex digest; a key is never a path or a prefix."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise BlobStoreError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class BlobStore(Protocol):
    """Bytes keyed by their SHA-256; every method is safe from several processes at once."""

    def put(self, data: bytes) -> str:
        """Store bytes; return their SHA-256. Idempotent, and a failed put leaves nothing."""

    def get(self, sha256: str) -> bytes:
        """The blob's bytes; :class:`BlobNotFound` when there is none."""

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None:
        """Remove the blob; a missing one is not an error."""

    def check(self) -> str:
        """Raise :class:`BlobStoreError` unless the store can be used; returns where it is."""


class FolderBlobStore:
    """Blobs under ``root/ab/cd/abcd…`` (two levels of fan-out)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
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
        """A local file holding the blob (folder store only: tools and tests that want a file)."""
        p = self._path(sha256)
        if not p.exists():
            raise BlobNotFound(sha256)
        return p

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sha256).unlink()

    def check(self) -> str:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlobStoreError(f"cannot create the blob folder {self.root}: {exc.strerror or exc}") from exc
        return str(self.root)


def build_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings.blobs`` names: a folder, or an S3-compatible bucket.

    S3 credentials come from the environment only (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, or anything else boto3's default chain reads),
    never from the configuration file.
    """
    if settings.blobs.kind == "s3":
        from storage.blobs_s3 import S3BlobStore

        return S3BlobStore.from_settings(settings.blobs)
    return FolderBlobStore(settings.blob_dir())
