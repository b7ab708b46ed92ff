"""Register works' vector signals in a VectorIndex and query them for an upload.

The glue between :mod:`matching.signals` and :mod:`matching.index` that the
engine calls, so that registering or removing a work updates the index at
once and an upload's candidates come from the index, never from a scan of
the registry:

- ``clip``: one point per flattened rendering of the work (on white, and on
  black for logos with transparency), vector = the embedding;
- ``pdq`` (optional, for deployments that keep PDQ in Qdrant too): one point
  per reliable dihedral variant, vector = the 256 bits as 0/1 floats.

Payload: ``work_id``, ``owner_id``, ``kind``, plus ``signal`` and
``variant``. Point ids come from :func:`matching.index.point_id`, so
re-registering a work overwrites its points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from matching.decode import DecodedImage
from matching.index.base import MAX_POINTS_PER_WORK, IndexPoint, VectorIndex, VectorSpec, point_id
from matching.signals.base import Signal
from matching.signals.pdq import PdqSignal

__all__ = ["WorkVectors", "vector_specs"]


class _Work(Protocol):
    @property
    def work_id(self) -> int: ...

    @property
    def owner_id(self) -> int: ...

    @property
    def kind(self) -> str: ...


def vector_specs(embedder: Signal | None, *, with_pdq: bool = False) -> list[VectorSpec]:
    """The named vectors a :class:`WorkVectors` with this embedder writes."""
    from matching.index import PDQ_VECTOR

    specs = []
    if embedder is not None:
        specs.append(VectorSpec("clip", int(embedder.shape[0]), "cosine"))
    if with_pdq:
        specs.append(PDQ_VECTOR)
    return specs


class WorkVectors:
    """Writes and queries the vector signals of works in one VectorIndex."""

    def __init__(self, index: VectorIndex, embedder: Signal | None, *, with_pdq: bool = False) -> None:
        names = {s.name for s in index.specs}
        if embedder is not None and "clip" not in names:
            raise ValueError("index has no 'clip' vector")
        if with_pdq and "pdq" not in names:
            raise ValueError("index has no 'pdq' vector")
        self.index = index
        self.embedder = embedder
        self.with_pdq = with_pdq
        self._pdq = PdqSignal()

    def register(self, work: _Work, image: DecodedImage, *, clip: Sequence[Any] | None = None) -> int:
        """Replace the work's points; returns how many were written.

        ``clip`` is one embedding per rendering (``image.variants()``) computed
        elsewhere (the GPU stage); without it the embedder embeds, unless it
        loads no model, in which case the work gets no CLIP points for now.
        """
        import numpy as np

        from matching.index import pdq_to_vector

        base = {"work_id": int(work.work_id), "owner_id": int(work.owner_id), "kind": str(work.kind)}
        points: list[IndexPoint] = []
        if clip is None and self.embedder is not None and getattr(self.embedder, "loads_model", True):
            clip = list(np.asarray(self.embedder.embed(image.variants())))  # type: ignore[attr-defined]
        if clip is not None:
            if "clip" not in {s.name for s in self.index.specs}:
                raise ValueError("index has no 'clip' vector")
            for v in clip:
                points.append(IndexPoint(point_id(work.work_id, len(points)), {"clip": v},
                                         {**base, "signal": "clip", "variant": len(points)}))
        if self.with_pdq:
            for i, f in enumerate(self._pdq.dihedral(image)):
                if f.reliable and len(points) < MAX_POINTS_PER_WORK:
                    points.append(IndexPoint(point_id(work.work_id, len(points)), {"pdq": pdq_to_vector(f.vector)},
                                             {**base, "signal": "pdq", "variant": i}))
        self.index.delete_work(work.work_id)
        self.index.upsert(points)
        return len(points)

    def unregister(self, work_id: int) -> None:
        self.index.delete_work(work_id)

    def candidates(
        self, image: DecodedImage, *, owner_ids: Sequence[int] | None = None, limit: int = 20
    ) -> dict[int, dict[str, float]]:
        """Per candidate work: ``clip`` (best cosine similarity) and/or
        ``pdq_distance`` (smallest Hamming distance, bits)."""
        import numpy as np

        from matching.index import pdq_to_vector

        out: dict[int, dict[str, float]] = {}
        if self.embedder is not None:
            q = np.asarray(self.embedder.embed([image]))[0]  # type: ignore[attr-defined]
            for h in self.index.search("clip", q, limit * 2, owner_ids=owner_ids):
                d = out.setdefault(h.work_id, {})
                d["clip"] = max(d.get("clip", -1.0), h.score)
        if self.with_pdq:
            f = self._pdq.compute_image(image)
            if f.reliable:
                for h in self.index.search("pdq", pdq_to_vector(f.vector), limit * 8, owner_ids=owner_ids):
                    d = out.setdefault(h.work_id, {})
                    bits = float(round(h.score * h.score))  # Euclidean on bits = sqrt(Hamming)
                    d["pdq_distance"] = min(d.get("pdq_distance", math.inf), bits)
        return out
