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
- :meth:`VectorIndex.count` counts points; :meth:`VectorIndex.clear` removes all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = ["Distance", "Hit", "IndexPoint", "VectorIndex", "VectorSpec", "point_id"]

Distance = Literal["cosine", "euclid"]

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
class IndexPoint:
    id: int
    vectors: Mapping[str, np.ndarray]
    payload: Mapping[str, Any]

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

    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    def delete_work(self, work_id: int) -> None: ...

    def search(
        self, vector_name: str, vector: np.ndarray, limit: int = 10, owner_ids: Sequence[int] | None = None
    ) -> list[Hit]: ...

    def count(self) -> int: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


def check_point(specs: Mapping[str, VectorSpec], p: IndexPoint) -> None:
    for name, v in p.vectors.items():
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"point {p.id}: unknown vector {name!r} (known: {sorted(specs)})")
        if v.shape != (spec.size,):
            raise ValueError(f"point {p.id}: vector {name!r} has shape {v.shape}, expected ({spec.size},)")
