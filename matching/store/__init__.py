"""What the local-feature registry keeps, behind one interface.

:class:`matching.replica.LocalIndex` works only through a :class:`FeatureStore`:

- work arrays: one :class:`~matching.features.StoredWork` per work (npz bytes,
  the descriptors zstd-compressed inside: :func:`work_to_bytes`), the source of truth;
- the change feed: lines ``add <id>``, ``del <id>``, ``vocab <version> <works>``
  in order, read after an int cursor (a byte offset for the folder store, the
  last row id for the SQL one);
- the vocabulary (npz bytes), published together with its ``vocab`` line;
- postings snapshots: a named set of arrays per vocabulary plus a pointer to
  the current one (a cache: the works stay the source of truth);
- named locks, exclusive across processes (and machines, for the SQL store on
  PostgreSQL).

Two implementations, chosen by ``settings.shared.kind``
(:func:`build_feature_store`): :class:`matching.store.folder.FolderFeatureStore`
(files under ``DATA_DIR/features``) and :class:`matching.store.sql.SqlFeatureStore`
(database rows plus blob-store objects).
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import zstandard

from matching.features import LocalFeatures, StoredWork

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from config.settings import Settings
    from storage.blobs import BlobStore

__all__ = [
    "FeatureStore",
    "Locked",
    "build_feature_store",
    "thumbs_from_bytes",
    "work_from_bytes",
    "work_to_bytes",
]

U8 = npt.NDArray[np.uint8]


class Locked(Exception):
    """A named lock is held elsewhere (and the caller would not wait, or waited its timeout)."""


class FeatureStore(Protocol):
    """Everything :class:`matching.replica.LocalIndex` persists or shares."""

    # ---- work arrays
    def put_work(self, work: StoredWork) -> None: ...
    def get_work(self, work_id: int) -> StoredWork | None: ...
    def get_thumbs(self, work_id: int) -> U8:
        """Only the thumbnails of a stored work (empty when absent)."""
    def remove_work(self, work_id: int) -> None: ...
    def work_ids(self) -> list[int]: ...

    # ---- change feed
    def append(self, lines: Sequence[str]) -> int:
        """Append lines (in order, none lost or interleaved); the cursor after them."""
    def changes(self, after: int) -> tuple[list[str], int]:
        """Complete lines after cursor ``after`` and the cursor after them. Never skips
        a line that becomes visible later (cursors grow in commit order)."""
    def end(self) -> int:
        """The cursor after the last line."""

    # ---- vocabulary
    def get_vocab(self) -> bytes | None:
        """The published vocabulary's npz bytes, or None before the first."""
    def publish_vocab(self, data: bytes, version: str, works: int) -> int:
        """Store the vocabulary and append ``vocab <version> <works>`` atomically; the new cursor."""

    # ---- snapshots
    def snapshot_meta(self, version: str) -> dict[str, Any] | None:
        """The current snapshot pointer of vocabulary ``version`` (None: none, or unreadable)."""
    def put_snapshot(self, version: str, arrays: Mapping[str, npt.NDArray[Any]], meta: Mapping[str, Any]) -> str:
        """Store ``arrays`` and make them ``version``'s current snapshot; ``meta`` plus
        ``dir`` (the snapshot's name, returned) becomes the pointer."""
    def get_snapshot(self, version: str, mapped: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``version``'s current (pointer, arrays), the ``mapped`` ones memory-mapped
        read-only. FileNotFoundError when there is none; any other error when damaged."""
    def remove_snapshots(self, version: str, stale: Collection[str]) -> None:
        """Delete ``version``'s snapshots other than its current one, and every
        snapshot of the ``stale`` vocabularies."""

    # ---- locks
    def lock(self, name: str, *, timeout: float, wait: bool = True) -> AbstractContextManager[None]:
        """Hold the lock ``name`` for the block: :class:`Locked` at once when ``wait``
        is False and it is held, or after ``timeout`` seconds."""


#: zstd level of the descriptors in a work's npz. They are nine tenths of its
#: bytes and shrink to 0.5-0.75 of their size (SIFT's small values); the other
#: arrays stay plain npz members, so the thumbnails are read without them.
DESC_ZSTD_LEVEL = 3


def _pack_desc(desc: U8) -> U8:
    data = zstandard.ZstdCompressor(level=DESC_ZSTD_LEVEL).compress(np.ascontiguousarray(desc, np.uint8).tobytes())
    return np.frombuffer(data, np.uint8)


def _unpack_desc(packed: U8, shape: npt.NDArray[np.int64]) -> U8:
    rows, dim = (int(v) for v in shape)
    size = rows * dim
    if not size:
        return np.zeros((rows, dim), np.uint8)
    raw = packed.tobytes()
    try:
        # The frame states its size (-1 when it does not): checked first, so
        # nothing larger than the shape says is ever allocated.
        stated = zstandard.frame_content_size(raw)
        if stated != size:
            raise ValueError(f"a work's descriptors hold {stated} bytes, not {rows} x {dim}")
        data = zstandard.ZstdDecompressor().decompress(raw)
    except zstandard.ZstdError as exc:
        raise ValueError(f"a work's descriptors do not decompress to {rows} x {dim}: {exc}") from exc
    return np.frombuffer(data, np.uint8).reshape(rows, dim).copy()  # writable, like np.load's arrays


def work_to_bytes(w: StoredWork) -> bytes:
    """A stored work as npz bytes (the folder store's ``works/<id>.npz``); the
    descriptors are one zstd-compressed member per side (``d_desc_zst``)."""
    buf = io.BytesIO()
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "meta": np.array([w.work_id, w.owner_id, w.width, w.height], np.int64),
        "kind": np.array(w.kind),
        "pdq": w.pdq,
        "thumbs": w.thumbs,
    }
    for tag, f in (("d", w.direct), ("m", w.mirrored)):
        arrays[f"{tag}_xy"] = f.xy
        arrays[f"{tag}_scale"] = f.scale
        arrays[f"{tag}_angle"] = f.angle
        arrays[f"{tag}_desc_zst"] = _pack_desc(f.desc)
        arrays[f"{tag}_desc_shape"] = np.array(f.desc.shape, np.int64)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _open(source: bytes | Path) -> Any:
    return np.load(io.BytesIO(source) if isinstance(source, bytes) else source)


def work_from_bytes(source: bytes | Path) -> StoredWork:
    """The work in npz bytes (or an npz file) from :func:`work_to_bytes` (or
    from before the descriptors were compressed: a plain ``d_desc`` member)."""
    with _open(source) as z:
        wid, owner, width, height = (int(v) for v in z["meta"])
        feats = []
        for tag in ("d", "m"):
            desc = (_unpack_desc(z[f"{tag}_desc_zst"], z[f"{tag}_desc_shape"]) if f"{tag}_desc_zst" in z.files
                    else z[f"{tag}_desc"])
            feats.append(LocalFeatures(z[f"{tag}_xy"], z[f"{tag}_scale"], z[f"{tag}_angle"], desc, width, height))
        thumbs = z["thumbs"] if "thumbs" in z.files else np.zeros((0, 0, 0), np.uint8)
        return StoredWork(wid, owner, str(z["kind"]), width, height, feats[0], feats[1], z["pdq"], thumbs)


def thumbs_from_bytes(source: bytes | Path) -> U8:
    """Only the thumbnails of a work in npz bytes (or an npz file)."""
    with _open(source) as z:
        found: U8 = z["thumbs"] if "thumbs" in z.files else np.zeros((0, 0, 0), np.uint8)
        return found


def build_feature_store(
    settings: Settings, *, sessions: sessionmaker[Session] | None = None, blobs: BlobStore | None = None,
) -> FeatureStore:
    """The store ``settings.shared.kind`` names: "folder" (``DATA_DIR/features``) or
    "services" (tables through ``sessions``, arrays in ``blobs``; both built from
    the settings when not given)."""
    data_dir = Path(settings.data_dir)
    if settings.shared.kind == "folder":
        from matching.store.folder import FolderFeatureStore

        return FolderFeatureStore(data_dir / "features")
    from matching.store.sql import SqlFeatureStore

    if sessions is None:
        from storage.db import shared_sessionmaker

        sessions = shared_sessionmaker(settings.resolved_database_url())
    if blobs is None:
        from storage.blobs import build_blob_store

        blobs = build_blob_store(settings)
    return SqlFeatureStore(sessions, blobs, cache_dir=data_dir / "cache" / "feature-snapshots")
