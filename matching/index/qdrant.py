"""VectorIndex on qdrant-client: a Qdrant server, or the client's local mode.

The same class serves ``QdrantClient(url=...)`` (distributed deployments) and
``QdrantClient(path=...)`` / ``QdrantClient(":memory:")`` (the contract tests).
The collection is created on first use with one named vector per spec and
payload indexes on ``work_id`` and ``owner_id``. Writes wait for the server
to apply them (``wait=True``), so a search right after sees them.

Sparse specs become the collection's sparse vectors (with Qdrant's IDF
modifier where the spec asks for it). Opening an existing collection checks
that every declared vector, dense or sparse, is there with the same
parameters, and refuses the index otherwise: a collection may hold more
vectors than a caller uses, never different ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from matching.errors import IndexError_
from matching.index.base import (
    Hit,
    IndexPoint,
    SparseVector,
    SparseVectorSpec,
    VectorSpec,
    check_point,
    check_specs,
)

__all__ = ["QdrantIndex"]


class QdrantIndex:
    """A collection in Qdrant reached through an injected ``QdrantClient``."""

    def __init__(self, client: Any, collection: str, specs: Sequence[VectorSpec],
                 sparse_specs: Sequence[SparseVectorSpec] = ()) -> None:
        from qdrant_client import models

        self._m = models
        self.client = client
        self.collection = collection
        self._specs = list(specs)
        self._sparse = list(sparse_specs)
        check_specs(self._specs, self._sparse)
        self._by_name = {s.name: s for s in self._specs}
        self._sparse_by_name = {s.name: s for s in self._sparse}
        self._ensure()


    @property
    def specs(self) -> list[VectorSpec]:
        return list(self._specs)

    @property
    def sparse_specs(self) -> list[SparseVectorSpec]:
        return list(self._sparse)

    def _check_existing(self) -> None:
        params = self.client.get_collection(self.collection).config.params
        dense = params.vectors if isinstance(params.vectors, dict) else {}
        sparse = params.sparse_vectors or {}
        have = {n: [v.size, str(v.distance.value).lower()] for n, v in dense.items()}
        have_sparse = {n: "idf" if v.modifier == self._m.Modifier.IDF else "none" for n, v in sparse.items()}
        wrong = [f"{s.name} ({s.size}, {s.distance})" for s in self._specs
                 if have.get(s.name) != [s.size, s.distance]]
        wrong += [f"sparse {s.name} (modifier {s.modifier})" for s in self._sparse
                  if have_sparse.get(s.name) != s.modifier]
        if wrong:
            raise IndexError_(
                f"Qdrant collection {self.collection!r} holds vectors {have} and sparse vectors {have_sparse}, "
                f"not {', '.join(wrong)}; run `artwatch index rebuild`")

    def _ensure(self) -> None:
        m = self._m
        try:
            if self.client.collection_exists(self.collection):
                self._check_existing()
                return
            dist = {"cosine": m.Distance.COSINE, "euclid": m.Distance.EUCLID}
            modifier = {"idf": m.Modifier.IDF, "none": None}
            self.client.create_collection(
                self.collection,
                vectors_config={s.name: m.VectorParams(size=s.size, distance=dist[s.distance]) for s in self._specs},
                sparse_vectors_config={s.name: m.SparseVectorParams(modifier=modifier[s.modifier])
                                       for s in self._sparse} or None,
            )
            with warnings.catch_warnings():
                # Local mode says payload indexes do nothing there; a server uses them.
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                for key in ("work_id", "owner_id"):
                    self.client.create_payload_index(self.collection, key, m.PayloadSchemaType.INTEGER)
        except IndexError_:
            raise
        except Exception as exc:  # qdrant-client raises transport-specific errors
            raise IndexError_(f"Qdrant collection {self.collection!r}: {exc}") from exc

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        for p in points:
            check_point(self._by_name, p, self._sparse_by_name)
        structs = [
            self._m.PointStruct(
                id=p.id,
                vector={
                    **{k: np.asarray(v, np.float32).tolist() for k, v in p.vectors.items()},
                    **{k: self._m.SparseVector(indices=v.indices.tolist(), values=v.values.tolist())
                       for k, v in p.sparse.items()},
                },
                payload=dict(p.payload),
            )
            for p in points
        ]
        self.client.upsert(self.collection, structs, wait=True)

    def _work_filter(self, work_id: int) -> Any:
        m = self._m
        return m.Filter(must=[m.FieldCondition(key="work_id", match=m.MatchValue(value=int(work_id)))])

    def delete_work(self, work_id: int) -> None:
        self.client.delete(
            self.collection, points_selector=self._m.FilterSelector(filter=self._work_filter(work_id)), wait=True
        )

    def search(
        self, vector_name: str, vector: np.ndarray, limit: int = 10, owner_ids: Sequence[int] | None = None
    ) -> list[Hit]:
        if vector_name not in self._by_name:
            raise ValueError(f"unknown vector {vector_name!r}")
        if owner_ids is not None and not owner_ids:
            return []
        res = self.client.query_points(
            self.collection, query=np.asarray(vector, np.float32).tolist(), using=vector_name,
            limit=limit, query_filter=self._owner_filter(owner_ids), with_payload=True,
        )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def _owner_filter(self, owner_ids: Sequence[int] | None) -> Any:
        m = self._m
        if owner_ids is None:
            return None
        return m.Filter(must=[m.FieldCondition(key="owner_id", match=m.MatchAny(any=[int(o) for o in owner_ids]))])

    def search_sparse(
        self, vector_name: str, vector: SparseVector, limit: int = 10, owner_ids: Sequence[int] | None = None
    ) -> list[Hit]:
        if vector_name not in self._sparse_by_name:
            raise ValueError(f"unknown sparse vector {vector_name!r}")
        if (owner_ids is not None and not owner_ids) or not len(vector):
            return []
        q = self._m.SparseVector(indices=vector.indices.tolist(), values=vector.values.tolist())
        res = self.client.query_points(
            self.collection, query=q, using=vector_name, limit=limit,
            query_filter=self._owner_filter(owner_ids), with_payload=True,
        )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def clear(self) -> None:
        self.client.delete(
            self.collection, points_selector=self._m.FilterSelector(filter=self._m.Filter()), wait=True
        )

    def close(self) -> None:
        self.client.close()
