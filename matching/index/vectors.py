"""Register works' vector signals in a VectorIndex and query them for an upload.

The glue between :mod:`matching.signals` and :mod:`matching.index` that the
engine calls, so that registering or removing a work updates the index at
once and an upload's candidates come from the index, never from a scan of
the registry:

- ``clip``: one point per flattened rendering of the work (on white, and on
  black for logos with transparency), vector = the embedding;
- ``sscd``: the copy-detection descriptor (:mod:`matching.signals.sscd`), one
  point per rendering like ``clip``; an upload queries it with its whole frame
  and a few crops (:func:`upload_views`), so a work pasted into a larger
  picture is found too;
- ``pdq`` (optional, for deployments that keep PDQ in Qdrant too): one point
  per reliable dihedral variant, vector = the 256 bits as 0/1 floats.

Payload: ``work_id``, ``owner_id``, ``kind``, plus ``signal`` and
``variant``. Point ids come from :func:`matching.index.point_id`; each signal
has fixed slots (:data:`SLOTS`), so re-registering a work overwrites its
points, and the GPU stage can write a work's CLIP points without touching
the descriptor points the CPU worker wrote.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from matching.decode import DecodedImage
from matching.errors import IndexError_
from matching.index.base import MAX_POINTS_PER_WORK, IndexPoint, SparseVectorSpec, VectorIndex, VectorSpec, point_id
from matching.signals.base import Signal
from matching.signals.pdq import PdqSignal

if TYPE_CHECKING:
    from config.settings import MatchingSettings
    from storage.documents import DocumentStore

__all__ = ["SLOTS", "UploadView", "WorkVectors", "check_vector_keys", "settings_sparse_specs", "settings_specs",
           "settings_vector_keys", "upload_views", "vector_specs"]

#: First point slot of each signal's points (a work has at most 4 renderings); the
#: last two slots of a work are its visual words' (:mod:`matching.sparse_words`).
SLOTS = {"clip": 0, "sscd": 4, "pdq": 8, "words": MAX_POINTS_PER_WORK - 2}

#: Crops an upload's descriptor is also computed on: (side fraction, grid n), a
#: grid of n x n overlapping windows. A partial copy covers 10-50 % of an upload,
#: so a window of 40-60 % of each side holds most of it (docs/benchmarks.md).
UPLOAD_CROPS: tuple[tuple[float, int], ...] = ((0.6, 3), (0.4, 3))


#: The descriptor's background normalisation (:meth:`WorkVectors.descriptor_candidates`):
#: the upload's similarity to its BACKGROUND_RANK-th nearest work, at least
#: BACKGROUND_FLOOR (about the 75th percentile of that similarity on the dev set, so a
#: small registry is not normalised by a lucky low value), weighted by BACKGROUND_WEIGHT.
BACKGROUND_RANK = 3
BACKGROUND_FLOOR = 0.3
BACKGROUND_WEIGHT = 0.5


@dataclass(frozen=True)
class UploadView:
    """One window of an upload the descriptor looks at; ``box`` is
    ``(x0, y0, x1, y1)`` in the decoded image's pixels."""

    rgb: npt.NDArray[np.uint8]
    box: tuple[int, int, int, int]


def upload_views(rgb: npt.NDArray[np.uint8],
                 crops: Sequence[tuple[float, int]] = UPLOAD_CROPS) -> list[UploadView]:
    """The whole frame, then each crop grid's windows, row by row."""
    h, w = rgb.shape[:2]
    views = [UploadView(rgb, (0, 0, w, h))]
    for frac, n in crops:
        ch, cw = max(1, int(h * frac)), max(1, int(w * frac))
        for y in np.linspace(0, h - ch, n).astype(int):
            for x in np.linspace(0, w - cw, n).astype(int):
                views.append(UploadView(rgb[y:y + ch, x:x + cw], (int(x), int(y), int(x) + cw, int(y) + ch)))
    return views


class _Work(Protocol):
    @property
    def work_id(self) -> int: ...

    @property
    def owner_id(self) -> int: ...

    @property
    def kind(self) -> str: ...


def vector_specs(embedder: Signal | None, *, with_pdq: bool = False,
                 descriptor: Signal | None = None) -> list[VectorSpec]:
    """The named vectors a :class:`WorkVectors` with these signals writes."""
    from matching.index import PDQ_VECTOR

    specs = []
    if embedder is not None:
        specs.append(VectorSpec("clip", int(embedder.shape[0]), "cosine"))
    if descriptor is not None:
        specs.append(VectorSpec("sscd", int(descriptor.shape[0]), "cosine"))
    if with_pdq:
        specs.append(PDQ_VECTOR)
    return specs


def settings_specs(matching: MatchingSettings) -> list[VectorSpec]:
    """The named vectors of the works collection for these settings, without loading
    a model: every process opening the index (engines, the GPU stage) must agree."""
    specs = []
    if matching.use_embedder:
        from matching.signals.clip import clip_dim

        specs.append(VectorSpec("clip", clip_dim(matching.clip_model), "cosine"))
    if matching.descriptor:
        from matching.signals.sscd import SSCD_DIM

        specs.append(VectorSpec("sscd", SSCD_DIM, "cosine"))
    return specs


def settings_vector_keys(matching: MatchingSettings) -> dict[str, str]:
    """What each named vector of :func:`settings_specs` depends on beyond its width: the model,
    its weights, its input size. Two CLIP checkpoints (or two descriptor sizes) give vectors of
    one width that are not comparable."""
    keys = {}
    if matching.use_embedder:
        from matching.signals.clip import clip_model_key

        keys["clip"] = clip_model_key(matching.clip_model, matching.clip_pretrained)
    if matching.descriptor:
        from matching.signals.sscd import descriptor_key

        keys["sscd"] = descriptor_key(matching.descriptor, matching.descriptor_side, matching.descriptor_resize)
    return keys


def check_vector_keys(documents: DocumentStore, keys: dict[str, str], *, claim: bool = False) -> None:
    """Refuse to open the works' vectors with another model than the one that wrote them.

    The first process to open the index records ``keys`` in the shared document
    :data:`storage.documents.VECTOR_KEYS`; later ones must agree on every vector they both use
    (a process that uses fewer vectors, ``--no-embedder`` say, is not held to the others).
    ``claim`` (``artwatch index rebuild``, which rewrites every work's points) records ``keys``
    instead of checking them.
    """
    if not keys:
        return
    from storage.documents import VECTOR_KEYS

    data = json.dumps(keys, sort_keys=True).encode("utf-8")
    if claim:
        documents.put(VECTOR_KEYS, data)
        return
    have = json.loads(documents.put_if_absent(VECTOR_KEYS, data))
    wrong = [f"{name}: indexed with {have[name]}, these settings ask for {key}"
             for name, key in keys.items() if name in have and have[name] != key]
    if wrong:
        raise IndexError_(
            "the works' vectors were computed by another model than these settings name ("
            + "; ".join(wrong) + "); their similarities would mean nothing. Use the settings that indexed "
            "them (matching.clip_model / clip_pretrained, matching.descriptor / descriptor_side / "
            "descriptor_resize), or run `artwatch index rebuild` to re-index every work with these")
    if any(name not in have for name in keys):
        documents.put(VECTOR_KEYS, json.dumps({**have, **keys}, sort_keys=True).encode("utf-8"))


def settings_sparse_specs(matching: MatchingSettings) -> list[SparseVectorSpec]:
    """The sparse named vectors of the works collection for these settings (the visual
    words with ``matching.candidates = "sparse"``)."""
    if matching.candidates != "sparse":
        return []
    from matching.sparse_words import WORDS_VECTOR

    return [WORDS_VECTOR]


class WorkVectors:
    """Writes and queries the vector signals of works in one VectorIndex."""

    def __init__(self, index: VectorIndex, embedder: Signal | None, *, with_pdq: bool = False,
                 descriptor: Signal | None = None, crop_descriptor: Signal | None = None,
                 crops: Sequence[tuple[float, int]] = UPLOAD_CROPS) -> None:
        names = {s.name for s in index.specs}
        if embedder is not None and "clip" not in names:
            raise ValueError("index has no 'clip' vector")
        if descriptor is not None and "sscd" not in names:
            raise ValueError("index has no 'sscd' vector")
        if with_pdq and "pdq" not in names:
            raise ValueError("index has no 'pdq' vector")
        self.index = index
        self.embedder = embedder
        self.descriptor = descriptor
        #: The descriptor at the (smaller) input size an upload's crops are embedded at.
        self.crop_descriptor = crop_descriptor if crop_descriptor is not None else descriptor
        self.crops = tuple(crops)
        self.with_pdq = with_pdq
        self._pdq = PdqSignal()

    def register(self, work: _Work, image: DecodedImage, *, clip: Sequence[Any] | None = None) -> int:
        """Replace the work's points; returns how many were written.

        ``clip`` is one embedding per rendering (``image.variants()``) computed
        elsewhere (the GPU stage): then only the work's CLIP points are written
        and its other points stay. Without it every signal is computed here;
        an embedder that loads no model leaves the work without CLIP points
        until the GPU stage writes them.
        """
        from matching.index import pdq_to_vector

        base = {"work_id": int(work.work_id), "owner_id": int(work.owner_id), "kind": str(work.kind)}
        names = {s.name for s in self.index.specs}

        def points(signal: str, vectors: Sequence[Any]) -> list[IndexPoint]:
            if signal not in names:
                raise ValueError(f"index has no {signal!r} vector")
            first = SLOTS[signal]
            return [IndexPoint(point_id(work.work_id, first + i), {signal: v}, {**base, "signal": signal, "variant": i})
                    for i, v in enumerate(vectors)]

        if clip is not None:
            written = points("clip", list(clip)[: SLOTS["sscd"]])
            self.index.upsert(written)
            return len(written)
        renderings = image.variants()
        out: list[IndexPoint] = []
        if self.embedder is not None and getattr(self.embedder, "loads_model", True):
            out += points("clip", list(np.asarray(self.embedder.embed(renderings)))[: SLOTS["sscd"]])  # type: ignore[attr-defined]
        if self.descriptor is not None:
            out += points("sscd", list(np.asarray(self.descriptor.embed(renderings)))[: SLOTS["pdq"] - SLOTS["sscd"]])  # type: ignore[attr-defined]
        if self.with_pdq:
            reliable = [pdq_to_vector(f.vector) for f in self._pdq.dihedral(image) if f.reliable]
            out += points("pdq", reliable[: SLOTS["words"] - SLOTS["pdq"]])
        self.index.delete_work(work.work_id)
        self.index.upsert(out)
        return len(out)

    def unregister(self, work_id: int) -> None:
        self.index.delete_work(work_id)

    def candidates(
        self, image: DecodedImage, *, owner_ids: Sequence[int] | None = None, limit: int = 20
    ) -> dict[int, dict[str, float]]:
        """Per candidate work: ``clip`` (best cosine similarity) and/or
        ``pdq_distance`` (smallest Hamming distance, bits)."""
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

    def nearest(self, signal: str, vector: npt.NDArray[np.float32], limit: int,
                owner_ids: Sequence[int] | None = None) -> dict[int, float]:
        """Best cosine similarity per work among the ``limit`` nearest points of ``signal``."""
        best: dict[int, float] = {}
        for h in self.index.search(signal, np.asarray(vector, np.float32), limit, owner_ids=owner_ids):
            best[h.work_id] = max(best.get(h.work_id, -1.0), float(h.score))
        return best

    def descriptor_candidates(
        self, image: DecodedImage, *, owner_ids: Sequence[int] | None = None, limit: int = 10,
        normalise: bool = True, crops: bool = True,
    ) -> dict[int, tuple[float, tuple[int, int, int, int]]]:
        """Per work: the best descriptor cosine over the upload's views, and that view's box
        (empty without a descriptor). ``crops`` false: the whole frame is the only view,
        whatever ``descriptor_crops`` says.

        ``normalise`` subtracts the upload's background similarity, as SSCD's paper
        does with a background set: ``cos - BACKGROUND_WEIGHT * max(c3, BACKGROUND_FLOOR)``
        where ``c3`` is the upload's cosine to its third most similar work. An image that
        the descriptor finds close to everything (flat textures, noise, one style of
        drawing) then stops reading as a copy of each; a copy stands out from the rest
        of the registry. On the dev benchmark this gave +1 point of whole recall and
        +0.6 of uAP over the raw cosine with no false positive (docs/benchmarks.md)."""
        if self.descriptor is None:
            return {}
        views = upload_views(np.asarray(image.rgb), self.crops if crops else ())
        vecs = np.asarray(self.descriptor.embed([views[0].rgb]))  # type: ignore[attr-defined]
        if len(views) > 1:
            crop_vecs = np.asarray(self.crop_descriptor.embed([v.rgb for v in views[1:]]))  # type: ignore[union-attr]
            vecs = np.concatenate([vecs, crop_vecs])
        out: dict[int, tuple[float, tuple[int, int, int, int]]] = {}
        for view, vec in zip(views, vecs, strict=True):
            for wid, cos in self.nearest("sscd", vec, limit * 2, owner_ids).items():
                if wid not in out or cos > out[wid][0]:
                    out[wid] = (cos, view.box)
        if not normalise or not out:
            return out
        ranked = sorted((c for c, _ in out.values()), reverse=True)
        third = ranked[BACKGROUND_RANK - 1] if len(ranked) >= BACKGROUND_RANK else BACKGROUND_FLOOR
        shift = BACKGROUND_WEIGHT * max(third, BACKGROUND_FLOOR)
        return {wid: (cos - shift, box) for wid, (cos, box) in out.items()}
