"""Vector indexes: the ``VectorIndex`` role and its two implementations.

- :class:`EmbeddedIndex`: one machine, several processes (SQLite log + a
  Qdrant Edge replica per process); ``settings.index.backend = "embedded"``.
- :class:`PdqIndex`: exact in-memory Hamming lookup of PDQ hashes (PDQ is
  not a Qdrant vector by default; see that module).
- :class:`QdrantIndex`: a Qdrant server through qdrant-client
  (``backend = "server"``, ``settings.index.url``); also runs on the client's
  local mode, which the contract tests use.

:func:`build_index` picks one from the settings. Rebuilding the index from the
database (``artwatch index rebuild``) is the registry's:
:func:`registry.service.rebuild_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from matching.index.base import (
    Distance,
    Hit,
    IndexPoint,
    SparseModifier,
    SparseVector,
    SparseVectorSpec,
    VectorIndex,
    VectorSpec,
    point_id,
)
from matching.index.embedded import EmbeddedIndex
from matching.index.pdq import PdqIndex
from matching.index.qdrant import QdrantIndex

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "PDQ_VECTOR",
    "Distance",
    "EmbeddedIndex",
    "Hit",
    "IndexPoint",
    "PdqIndex",
    "QdrantIndex",
    "SparseModifier",
    "SparseVector",
    "SparseVectorSpec",
    "VectorIndex",
    "VectorSpec",
    "build_index",
    "default_specs",
    "pdq_to_vector",
    "point_id",
]

#: PDQ as a named vector: its 256 bits as 0/1 floats; Euclidean distance is
#: then sqrt(Hamming distance), so Qdrant can serve it too.
PDQ_VECTOR = VectorSpec("pdq", 256, "euclid")


def pdq_to_vector(packed: np.ndarray) -> np.ndarray:
    """32 packed PDQ bytes -> 256 float32 bits (for :data:`PDQ_VECTOR`)."""
    return np.unpackbits(np.asarray(packed, np.uint8)).astype(np.float32)


def default_specs(clip_dim: int = 512) -> list[VectorSpec]:
    """One named vector per indexed signal: CLIP (cosine) and PDQ (bits, Euclidean)."""
    return [VectorSpec("clip", clip_dim, "cosine"), PDQ_VECTOR]


def build_index(settings: Settings, specs: Sequence[VectorSpec] | None = None,
                sparse_specs: Sequence[SparseVectorSpec] = ()) -> VectorIndex:
    """The index the settings name: embedded under ``DATA_DIR/index``, or a Qdrant server."""
    specs = list(specs) if specs is not None else default_specs()
    if settings.index.backend == "server":
        from qdrant_client import QdrantClient

        from matching.errors import IndexError_

        if not settings.index.url:
            raise IndexError_("index.backend is 'server' but index.url is empty")
        client = QdrantClient(url=settings.index.url, api_key=settings.index.api_key or None)
        return QdrantIndex(client, settings.index.collection, specs, sparse_specs)
    if settings.shared.kind == "services":
        from matching.errors import IndexError_

        # The embedded index is a folder: machines sharing only the services
        # would each hold a different set of CLIP and descriptor points (or works' words).
        raise IndexError_(
            "shared.kind is 'services' but index.backend is 'embedded', which keeps the works' CLIP and "
            "descriptor vectors (and, with matching.candidates = 'sparse', their visual words) in "
            "DATA_DIR/index on one machine: set index.backend = 'server' and index.url "
            "(ARTWATCH_INDEX__BACKEND=server, ARTWATCH_INDEX__URL=http://qdrant:6333), "
            "or turn them off (matching.use_embedder = false, matching.descriptor = \"\") "
            "and keep matching.candidates = 'postings'")
    return EmbeddedIndex(settings.index_dir() / settings.index.collection, specs, sparse_specs=sparse_specs)

