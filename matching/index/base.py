"""The ``VectorIndex`` role: named vectors per point, payload, owner filter.

A point is one vector set of one registered work (a work may have several
points, e.g. one per PDQ dihedral variant). Every point's payload carries at
least ``work_id``, ``owner_id`` and ``kind``. Each signal has its own named
vector (:class:`VectorSpec`); a point may carry any subset of them.

Contract (the suite in ``tests/matching/test_index_contract.py`` runs it
against every implementation):

- :meth:`VectorIndex.upsert` replaces points by id; :meth:`VectorIndex.delete_work`
  removes every point of a work; both are visible to the next search, in this
  and in every other process using the same index;
- :meth:`VectorIndex.search` returns at most ``limit`` hits, best first, only
  from points carrying that vector, only of the given owners when
  ``owner_ids`` is not None; ``Hit.score`` is Qdrant's: cosine similarity
  (higher is closer) or Euclidean distance (lower is closer);
- :meth:`VectorIndex.search_sparse` does the same for a sparse named vector
  (:class:`SparseVectorSpec`): ``Hit.score`` is the dot product of the query
  and the point's vector, each query value first multiplied by the term's IDF
  when the spec asks Qdrant for it (``modifier="idf"``); points sharing no
  index with the query, and an empty query, return nothing;
- :meth:`VectorIndex.count` counts points; :meth:`VectorIndex.clear` removes all.

Dense and sparse names share one namespace: a point's ``vectors`` and
``sparse`` keys name specs of the matching kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Distance", "Hit", "IndexPoint", "SparseModifier", "SparseVector", "SparseVectorSpec", "VectorIndex",
           "VectorSpec", "point_id"]

Distance = Literal["cosine", "euclid"]
#: Qdrant's sparse-vector modifier: ``"idf"`` weighs each query term by its
#: inverse document frequency over the points carrying the vector.
SparseModifier = Literal["none", "idf"]

#: Points per work: ``point_id(work_id, k)`` for k < MAX_POINTS_PER_WORK.
MAX_POINTS_PER_WORK = 64


def point_id(work_id: int, k: int = 0) -> int:
    """A stable point id for the k-th point of a work."""
    if not 0 <= k < MAX_POINTS_PER_WORK:
        raise ValueError(f"point index {k} out of range")
    return work_id * MAX_POINTS_PER_WORK + k


@dataclass(frozen=True)
class VectorSpec:
    name: str
    size: int
    distance: Distance = "cosine"


@dataclass(frozen=True)
class SparseVectorSpec:
    name: str
    modifier: SparseModifier = "none"


@dataclass(frozen=True, eq=False)
class SparseVector:
    """Non-zero entries of a sparse vector: distinct ``indices`` (uint32) and their ``values`` (float32)."""

    indices: npt.NDArray[np.uint32]
    values: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices)
        val = np.asarray(self.values)
        if idx.ndim != 1 or idx.shape != val.shape:
            raise ValueError(f"sparse vector: indices {idx.shape} and values {val.shape} differ")
        if idx.size and (idx.min() < 0 or idx.max() > np.iinfo(np.uint32).max):
            raise ValueError("sparse vector: indices must fit in uint32")
        if np.unique(idx).size != idx.size:
            raise ValueError("sparse vector: duplicate indices")
        if not np.all(np.isfinite(val)):
            raise ValueError("sparse vector: values must be finite")
        object.__setattr__(self, "indices", idx.astype(np.uint32))
        object.__setattr__(self, "values", val.astype(np.float32))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def dot(self, other: SparseVector) -> float:
        """The plain dot product (what an index without a modifier scores)."""
        common, ia, ib = np.intersect1d(self.indices, other.indices, assume_unique=True, return_indices=True)
        if not common.size:
            return 0.0
        return float(np.dot(self.values[ia].astype(np.float64), other.values[ib].astype(np.float64)))


@dataclass(frozen=True)
class IndexPoint:
    id: int
    vectors: Mapping[str, np.ndarray]
    payload: Mapping[str, Any]
    #: Sparse named vectors (:class:`SparseVectorSpec`); dense-only points leave it empty.
    sparse: Mapping[str, SparseVector] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("work_id", "owner_id", "kind"):
            if key not in self.payload:
                raise ValueError(f"point {self.id}: payload lacks {key!r}")


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def work_id(self) -> int:
        return int(self.payload["work_id"])

    @property
    def owner_id(self) -> int:
        return int(self.payload["owner_id"])


@runtime_checkable
class VectorIndex(Protocol):
    @property
    def specs(self) -> Sequence[VectorSpec]:
        """The named vectors this index holds."""

    @property
    def sparse_specs(self) -> Sequence[SparseVectorSpec]:
        """The sparse named vectors this index holds (none for a dense-only index)."""

    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    def delete_work(self, work_id: int) -> None: ...

    def search(
        self, vector_name: str, vector: np.ndarray, limit: int = 10, owner_ids: Sequence[int] | None = None
    ) -> list[Hit]: ...

    def search_sparse(
        self, vector_name: str, vector: SparseVector, limit: int = 10, owner_ids: Sequence[int] | None = None
    ) -> list[Hit]: ...

    def count(self) -> int: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


def check_specs(specs: Sequence[VectorSpec], sparse: Sequence[SparseVectorSpec]) -> None:
    """Names are unique across dense and sparse specs."""
    names = [s.name for s in specs] + [s.name for s in sparse]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"vector names used twice: {dup}")
    for s in sparse:
        if s.modifier not in ("none", "idf"):
            raise ValueError(f"sparse vector {s.name!r}: unknown modifier {s.modifier!r}")


def check_point(specs: Mapping[str, VectorSpec], p: IndexPoint,
                sparse: Mapping[str, SparseVectorSpec] | None = None) -> None:
    for name in p.sparse:
        if name not in (sparse or {}):
            raise ValueError(f"point {p.id}: unknown sparse vector {name!r} (known: {sorted(sparse or {})})")
    for name, v in p.vectors.items():
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"point {p.id}: unknown vector {name!r} (known: {sorted(specs)})")
        if v.shape != (spec.size,):
            raise ValueError(f"point {p.id}: vector {name!r} has shape {v.shape}, expected ({spec.size},)")
