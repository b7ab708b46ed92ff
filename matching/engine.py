"""The matching engine: register works, analyse uploads, decide.

One upload is decoded once. Its RootSIFT keypoints query the local-feature
inverted file (:mod:`matching.postings`, kept in step with the shared registry
by :mod:`matching.replica`); the best-voted works are verified geometrically
(:mod:`matching.verify`), which also gives the polygon where the work sits.
PDQ with the works' dihedral variants catches near-exact copies whose
keypoints were destroyed (heavy blur, pixelisation).

Every (upload, work) pair gets one score in [0, 1]: a logistic model over
the verification evidence (distinct inliers, inlier ratio, coverage) combined
with a logistic model of the PDQ distance by noisy-OR. When the open_clip
embedder is on, works' embeddings live as the ``clip`` named vector in the
VectorIndex (Qdrant); an upload's nearest works join the candidates, their
cosine similarity is kept for the reviewer, and it enters the score only
through a logistic model that ``artwatch calibrate`` fitted for the deployed
model (none until then, so uncalibrated or random weights never decide). The models and the
decision threshold come from the shared calibration document written by
:func:`matching.calibrate.calibrate`; without that file the built-in
coefficients (fitted the same way on synthetic copies, see docs) and
``settings.matching.threshold`` apply. ``score`` estimates the probability
that the pair is a true copy on the calibration distribution.

``candidates = "sparse"`` takes the works to verify from the VectorIndex
instead (:mod:`matching.sparse_words`: each work image's visual words as a
BM25 sparse vector, which a Qdrant cluster shards); their tentative
correspondences still come from the postings of those works only, so
verification and scoring are the same as with the default ``"postings"``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import pdqhash

from matching.decode import DecodedImage, decode_image
from matching.dense import dense_agreement, work_thumbnails
from matching.features import (
    LocalFeatures,
    StoredWork,
    extract_features,
    extract_work_features,
    limit_native_threads,
)
from matching.index.pdq import PdqIndex
from matching.postings import Correspondences
from matching.replica import LocalIndex, MaintenanceHook
from matching.signals.pdq import DIHEDRAL
from matching.store import FeatureStore
from matching.verify import Verification, verify

if TYPE_CHECKING:
    from config.settings import Settings
    from matching.index.vectors import WorkVectors
    from matching.sparse_words import SparseWords
    from storage.documents import DocumentCache, DocumentStore

__all__ = ["Candidate", "Engine", "ScoreModel", "WorkRef", "build_engine"]

log = logging.getLogger(__name__)

#: Decoding size: uploads are described at about 320x240 and works at up to
#: 512x384, so nothing larger is ever needed.
UPLOAD_MAX_SIDE = 768
WORK_MAX_SIDE = 1024
#: PDQ distance above which PDQ says nothing (random pairs sit near 128).
PDQ_RELEVANT = 64
#: About one chance correspondence in this many lands in a given 3x3 window of
#: the (rotation, scale) histogram (18 rotation bins, ~6 populated scale bins).
CHANCE_CELLS = 12.0
#: The dense term's value when it could not be measured.
DENSE_UNKNOWN = 0.5
#: An open decision's local term at least this, and its aligned region is described
#: too (:meth:`Engine.describe_regions`).
REGION_MIN_LOCAL = 0.02
#: The margin around an aligned region's bounding box, as a fraction of its sides.
REGION_MARGIN = 0.05
#: At most this many regions are described per upload, the strongest local terms
#: first: a bound on the cost (on the dev and held-out splits no copy ranked past 2nd).
REGION_MAX = 4
#: Built-in ``ScoreModel.sscd`` (see there).
SSCD_DEFAULT: tuple[float, float] | None = (-8.47, 18.52)


@dataclass(frozen=True)
class WorkRef:
    work_id: int
    owner_id: int
    kind: str  # "logo" | "artwork"


@dataclass(frozen=True)
class Candidate:
    """One (upload, work) pair. ``region`` is the work's outline in upload pixels."""

    work_id: int
    owner_id: int
    score: float
    match: bool
    signals: dict[str, float]
    region: list[list[float]] | None


@dataclass(frozen=True)
class ScoreModel:
    """Calibrated score: logistic models of the local and PDQ evidence.

    ``local`` weights ``[bias, log1p(inliers), inlier_ratio, log(coverage + 0.01),
    dense]`` where ``dense`` is the edge agreement of the fitted alignment
    (:mod:`matching.dense`; :data:`DENSE_UNKNOWN` when the upload shows too
    little of the work to tell); ``pdq`` weights ``[bias, distance]``.

    The built-in weights were fitted on the verified pairs of the dev
    benchmark (docs/benchmarks.md, two-fold check); ``artwatch calibrate``
    refits them on the registry's own synthetic copies.
    """

    local: tuple[float, float, float, float, float] = (-4.52, 1.13, 2.66, 0.89, 6.01)
    pdq: tuple[float, float] = (7.0, -0.25)
    #: ``[bias, cosine]``; None until calibration found CLIP informative.
    clip: tuple[float, float] | None = None
    #: ``[bias, cosine]`` of the copy-detection descriptor's best view (whole
    #: upload or a crop). Its weights ship with the package, so the built-in
    #: model was fitted on the dev benchmark, the way ``artwatch calibrate``
    #: refits it on the registry (``matching.calibrate._fit_cosine``; the figures
    #: in docs/benchmarks.md); None turns the term off.
    sscd: tuple[float, float] | None = SSCD_DEFAULT
    threshold: float = 0.5
    target_precision: float | None = None

    def local_prob(self, v: Verification | None, dense: float | None = None) -> float:
        if v is None or not v.plausible or v.inliers < 4:
            return 0.0
        b, a1, a2, a3, a4 = self.local
        z = (b + a1 * math.log1p(v.inliers) + a2 * v.inlier_ratio + a3 * math.log(v.coverage + 0.01)
             + a4 * (DENSE_UNKNOWN if dense is None else dense))
        return _sigmoid(z)

    def pdq_prob(self, distance: int | None) -> float:
        if distance is None or distance > PDQ_RELEVANT:
            return 0.0
        b, a = self.pdq
        return _sigmoid(b + a * distance)

    def clip_prob(self, cosine: float | None) -> float:
        if cosine is None or self.clip is None:
            return 0.0
        b, a = self.clip
        return _sigmoid(b + a * cosine)

    def sscd_prob(self, cosine: float | None) -> float:
        if cosine is None or self.sscd is None:
            return 0.0
        b, a = self.sscd
        return _sigmoid(b + a * cosine)

    def combine(self, p_local: float, p_pdq: float, p_clip: float = 0.0, p_sscd: float = 0.0) -> float:
        return 1.0 - (1.0 - p_local) * (1.0 - p_pdq) * (1.0 - p_clip) * (1.0 - p_sscd)

    def to_json(self) -> dict[str, Any]:
        return {"local": list(self.local), "pdq": list(self.pdq),
                "clip": list(self.clip) if self.clip is not None else None,
                "sscd": list(self.sscd) if self.sscd is not None else None,
                "threshold": self.threshold, "target_precision": self.target_precision}

    @staticmethod
    def from_json(d: dict[str, Any], default_threshold: float) -> ScoreModel:
        base = ScoreModel(threshold=default_threshold)
        loc = d.get("local", base.local)
        pdq = d.get("pdq", base.pdq)
        clip = d.get("clip")
        # Absent: written before the descriptor existed, so the built-in model applies.
        sscd = d.get("sscd", base.sscd)
        loc = [*loc, 0.0] if len(loc) == 4 else loc  # written before the dense term existed
        return ScoreModel(
            local=(float(loc[0]), float(loc[1]), float(loc[2]), float(loc[3]), float(loc[4])),
            pdq=(float(pdq[0]), float(pdq[1])),
            clip=(float(clip[0]), float(clip[1])) if clip else None,
            sscd=(float(sscd[0]), float(sscd[1])) if sscd else None,
            threshold=float(d.get("threshold", default_threshold)),
            target_precision=d.get("target_precision"),
        )


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _pdq_bits(rgb: npt.NDArray[np.uint8], dihedral: bool) -> tuple[npt.NDArray[np.uint8], int]:
    """PDQ hashes packed to (k, 32) bytes, and the quality."""
    img = rgb
    if max(img.shape[:2]) > 512:
        s = 512 / max(img.shape[:2])
        img = np.asarray(cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                                    interpolation=cv2.INTER_AREA), np.uint8)
    img = np.ascontiguousarray(img)
    if dihedral:
        # Hash the transformed pixels: pdqhash 0.2.8's compute_dihedral lands
        # 64-92 bits away from the rotated image's own hash (see matching.signals.pdq).
        results = [pdqhash.compute(np.ascontiguousarray(t(img))) for t in DIHEDRAL.values()]
        hashes, quality = [h for h, _ in results], results[0][1]
    else:
        h, quality = pdqhash.compute(img)
        hashes = [h]
    bits = np.stack([np.asarray(h, np.uint8) for h in hashes])
    return np.packbits(bits, axis=1), int(quality)


@dataclass
class _Analysis:
    """What one upload yields before scoring (kept for calibration)."""

    verifications: dict[int, Verification]
    pdq: dict[int, int]
    width: int
    height: int
    scale: float
    #: work id -> best cosine similarity of the upload's CLIP embedding.
    clip: dict[int, float] = field(default_factory=dict)
    #: work id -> (best descriptor cosine over the upload's views, that view's box).
    sscd: dict[int, tuple[float, tuple[int, int, int, int]]] = field(default_factory=dict)
    #: work id -> edge agreement of the verified alignment (matching.dense).
    dense: dict[int, float] = field(default_factory=dict)


@dataclass
class Engine:
    """Registers works and analyses uploads; safe to use from several processes.

    Work features persist in :attr:`feature_store`; each call first picks
    up works that other processes registered or removed.
    """

    data_dir: Path
    default_threshold: float = 0.5
    #: How many (work, mirror) images are verified, the most consistent first...
    verify_top: int = 32
    #: ...of the best-voted ones whose weak geometric consistency is weighed. A copy
    #: pasted small into a busy photo gets few votes but a clear peak, so the second
    #: list is the longer (docs/benchmarks.md, "How many candidates are verified").
    search_top: int = 192
    #: CLIP named vectors in the VectorIndex; None when the embedder is off.
    vectors: WorkVectors | None = None
    clip_top: int = 10
    #: Works the descriptor proposes per upload view.
    descriptor_top: int = 10
    #: Where the index's due retrains and snapshots go (:attr:`LocalIndex.maintenance`);
    #: None runs them in this process, inside the call that made them due.
    maintenance: MaintenanceHook | None = None
    #: Threads that read and quantise works when many are loaded at once
    #: (:attr:`LocalIndex.load_threads`; 0: half the CPUs, 1 to 4).
    load_threads: int = 0
    #: Where the score calibration lives (:data:`storage.documents.CALIBRATION`);
    #: None means the file in ``data_dir``.
    documents: DocumentStore | None = None
    #: Where the registry lives (:func:`matching.store.build_feature_store`); None: the
    #: folder store under ``data_dir/features``.
    feature_store: FeatureStore | None = None
    #: Where the works to verify come from: the postings walk, or the works'
    #: visual words in :attr:`sparse` (then the postings of those works only).
    candidates: Literal["postings", "sparse"] = "postings"
    #: The works' visual words in a VectorIndex; required with ``candidates = "sparse"``.
    sparse: SparseWords | None = None
    #: Work images (points) asked of the sparse index per upload.
    sparse_top: int = 48
    index: LocalIndex = field(init=False)
    _calibration: DocumentCache[ScoreModel] = field(init=False)
    #: PDQ hashes of the registered works (all dihedral variants), kept in step
    #: with the local index when its generation changes (:meth:`_sync_pdq`).
    _pdq: PdqIndex = field(default_factory=PdqIndex, init=False)
    _pdq_key: int = field(default=-1, init=False)
    _pdq_works: dict[int, StoredWork] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.candidates not in ("postings", "sparse"):
            raise ValueError(f"candidates must be 'postings' or 'sparse', not {self.candidates!r}")
        if self.candidates == "sparse" and self.sparse is None:
            raise ValueError("candidates = 'sparse' needs the works' sparse vectors (Engine.sparse)")
        self.data_dir = Path(self.data_dir)
        store = self.feature_store
        if store is None:
            from matching.store.folder import FolderFeatureStore

            store = FolderFeatureStore(self.data_dir / "features")
        self.index = LocalIndex(store, maintenance=self.maintenance, load_threads=self.load_threads)
        # storage imports SQLAlchemy: not at module level, so `import matching` stays light.
        from storage.documents import CALIBRATION, DocumentCache, FolderDocumentStore

        if self.documents is None:
            self.documents = FolderDocumentStore(self.data_dir)
        self._calibration = DocumentCache(
            self.documents, CALIBRATION,
            lambda data: ScoreModel.from_json(json.loads(data.decode("utf-8")), self.default_threshold),
            lambda: ScoreModel(threshold=self.default_threshold))
        self.index.refresh()

    # ------------------------------------------------------------ registration

    @property
    def defers_clip(self) -> bool:
        """True when CLIP is on but computed elsewhere (``workers.embed_stage``): this
        engine writes no CLIP vectors of works and wants uploads' embeddings handed in."""
        embedder = self.vectors.embedder if self.vectors is not None else None
        return embedder is not None and not getattr(embedder, "loads_model", True)

    @property
    def has_descriptor(self) -> bool:
        """True when the copy-detection descriptor is on (``matching.descriptor``)."""
        return self.vectors is not None and self.vectors.descriptor is not None

    def register(self, work: WorkRef, data: bytes, *, name: str = "") -> None:
        """Compute and persist every signal of ``work``; registering again replaces it.

        An unreadable image raises before anything is stored; ``name`` (the
        file name) is what the error names.
        """
        img = decode_image(data, name=name or f"work {work.work_id}", max_side=WORK_MAX_SIDE)
        stored = self._prepare_decoded(work, img)
        self.add_prepared(stored)
        if self.vectors is not None:
            self.vectors.register(work, img)
            if self.sparse is not None:
                # WorkVectors.register replaced every point of the work, its words too.
                self._sparse_add(stored, retrained=False)

    def prepare(self, work: WorkRef, data: bytes) -> StoredWork:
        """Compute a work's local and PDQ signals without touching the registry (parallelisable).

        CLIP vectors are written by :meth:`register` only.
        """
        img = decode_image(data, name=f"work {work.work_id}", max_side=WORK_MAX_SIDE)
        return self._prepare_decoded(work, img)

    def _prepare_decoded(self, work: WorkRef, img: DecodedImage) -> StoredWork:
        renderings = [np.asarray(r) for r in img.variants()]
        direct, mirrored = extract_work_features(renderings)
        pdq = np.concatenate([_pdq_bits(r, dihedral=True)[0] for r in renderings])
        h, w = renderings[0].shape[:2]
        return StoredWork(work.work_id, work.owner_id, work.kind, w, h, direct, mirrored, pdq,
                          work_thumbnails(renderings))

    def add_prepared(self, stored: StoredWork) -> None:
        """Persist and index what :meth:`prepare` computed."""
        if self.sparse is None:
            self.index.add(stored)
            return
        before = self.index.vocab.version if self.index.vocab is not None else None
        self.index.add(stored)
        after = self.index.vocab.version if self.index.vocab is not None else None
        self._sparse_add(stored, retrained=after != before)

    def _sparse_add(self, stored: StoredWork, *, retrained: bool) -> None:
        """Write a new work's words, or every work's when adding it retrained the
        vocabulary. (A retrain elsewhere is caught at query time: hits under an
        older vocabulary make :meth:`_local_candidates` rewrite them.)"""
        assert self.sparse is not None
        vocab = self.index.vocab
        if vocab is None:
            return
        if retrained:
            self._sparse_rewrite()
        else:
            self.sparse.register(vocab, stored)

    def _sparse_rewrite(self) -> None:
        assert self.sparse is not None
        if self.index.vocab is None:
            return
        n = self.sparse.rewrite(self.index)
        log.info("wrote the visual words of %d work images under vocabulary %s", n, self.index.vocab.version)

    def unregister(self, work_id: int) -> None:
        """Forget a work everywhere; unknown ids are ignored."""
        self.index.remove(work_id)
        if self.vectors is not None:
            self.vectors.unregister(work_id)
        if self.sparse is not None:
            self.sparse.unregister(work_id)

    def retrain(self) -> None:
        """Retrain the local-feature vocabulary on the current registry (index rebuild)."""
        self.index.retrain()
        self.index.refresh()
        if self.sparse is not None:
            self._sparse_rewrite()

    # ------------------------------------------------------------ analysis

    @property
    def model(self) -> ScoreModel:
        """The calibrated score model, reread when another process calibrates again."""
        return self._calibration.get()

    def analyse(self, data: bytes, *, name: str = "", owner_ids: list[int] | None = None,
                embedding: npt.NDArray[np.float32] | None = None,
                work_ids: Sequence[int] | None = None) -> list[Candidate]:
        """Candidates for one upload, best first; ``match`` is the decision.

        ``embedding`` is the upload's CLIP vector when a GPU worker already
        computed it; otherwise it is computed here when the embedder is on.
        ``work_ids`` restricts every signal's search to those works (the
        back-scan of newly registered works, ``registry.backscan``): one such
        analysis costs what a normal one does, whatever the registry's size.
        """
        img = decode_image(data, name=name, max_side=UPLOAD_MAX_SIDE)
        a = self.analyse_decoded(img, owner_ids=owner_ids, work_ids=work_ids)
        a.clip = self.clip_candidates(img, owner_ids=owner_ids, embedding=embedding, work_ids=work_ids)
        a.sscd = self.descriptor_candidates(img, owner_ids=owner_ids, work_ids=work_ids)
        self.describe_regions(img, a, owner_ids=owner_ids, work_ids=work_ids)
        return self.score(a, img)

    def analyse_batch(self, items: list[tuple[bytes, str]]) -> list[list[Candidate]]:
        """Analyse several uploads (one decode each, one CLIP batch); results in input order."""
        embedder = self.vectors.embedder if self.vectors is not None else None
        if embedder is None or not embedder.loads_model:  # type: ignore[attr-defined]
            return [self.analyse(data, name=name) for data, name in items]
        imgs = [decode_image(data, name=name, max_side=UPLOAD_MAX_SIDE) for data, name in items]
        vecs = np.asarray(embedder.embed(imgs))  # type: ignore[attr-defined]
        out = []
        for img, vec in zip(imgs, vecs, strict=True):
            a = self.analyse_decoded(img)
            a.clip = self.clip_candidates(img, embedding=vec)
            a.sscd = self.descriptor_candidates(img)
            self.describe_regions(img, a)
            out.append(self.score(a, img))
        return out

    def clip_candidates(self, img: DecodedImage, *, owner_ids: Sequence[int] | None = None,
                        embedding: npt.NDArray[np.float32] | None = None,
                        work_ids: Sequence[int] | None = None) -> dict[int, float]:
        """Nearest works by CLIP cosine from the VectorIndex (empty when the embedder is off).

        The vector index filters by owner only: ``work_ids`` searches those
        works' owners and keeps the hits on those works."""
        if self.vectors is None or self.vectors.embedder is None:
            return {}
        if work_ids is not None:
            wanted = set(work_ids)
            owners = sorted({sw.owner_id for wid in wanted if (sw := self.index.work(wid)) is not None})
            if owner_ids is not None:
                owners = [o for o in owners if o in set(owner_ids)]
            if not owners:
                return {}
            near = self.clip_candidates(img, owner_ids=owners, embedding=embedding)
            return {wid: cos for wid, cos in near.items() if wid in wanted}
        if embedding is None and not self.defers_clip:
            found = self.vectors.candidates(img, owner_ids=owner_ids, limit=self.clip_top)
            return {wid: d["clip"] for wid, d in found.items() if "clip" in d}
        if embedding is None:  # no model here, and none handed in: no CLIP evidence
            return {}
        best: dict[int, float] = {}
        for hit in self.vectors.index.search("clip", np.asarray(embedding, np.float32), self.clip_top * 2,
                                             owner_ids=owner_ids):
            best[hit.work_id] = max(best.get(hit.work_id, -1.0), float(hit.score))
        return best

    def descriptor_candidates(
        self, img: DecodedImage, *, owner_ids: Sequence[int] | None = None, work_ids: Sequence[int] | None = None,
        crops: bool = True,
    ) -> dict[int, tuple[float, tuple[int, int, int, int]]]:
        """Nearest works by the copy-detection descriptor over the upload's whole frame
        and crops (empty when it is off; ``crops`` false: the whole frame only);
        ``work_ids`` as in :meth:`clip_candidates`."""
        if self.vectors is None or self.vectors.descriptor is None:
            return {}
        owners = owner_ids
        wanted = set(work_ids) if work_ids is not None else None
        if wanted is not None:
            owners = sorted({sw.owner_id for wid in wanted if (sw := self.index.work(wid)) is not None
                             and (owner_ids is None or sw.owner_id in set(owner_ids))})
            if not owners:
                return {}
        found = self.vectors.descriptor_candidates(img, owner_ids=owners, limit=self.descriptor_top, crops=crops)
        return {wid: hit for wid, hit in found.items() if wanted is None or wid in wanted}

    def describe_regions(
        self, img: DecodedImage, a: _Analysis, *, owner_ids: Sequence[int] | None = None,
        work_ids: Sequence[int] | None = None,
    ) -> int:
        """The descriptor on the region that a work's alignment proposes, where the decision is open.

        A copy pasted into a photo is a small part of the upload, and the whole
        frame's descriptor sees mostly the photo. Where a work has a plausible
        alignment whose local term is at least :data:`REGION_MIN_LOCAL` and whose
        score is still below the threshold, the bounding box of its outline
        (with :data:`REGION_MARGIN`) is described as an upload of its own,
        normalised against the registry the same way, and its cosine to that
        work replaces the whole frame's when higher; at most :data:`REGION_MAX`
        regions per upload. Updates ``a.sscd`` in place and returns how many
        regions were described (none when the descriptor is off).
        docs/benchmarks.md, "The descriptor on the aligned region"."""
        if self.vectors is None or self.vectors.descriptor is None:
            return 0
        model = self.model
        rgb = np.asarray(img.rgb)
        h, w = rgb.shape[:2]
        open_: list[tuple[float, int, tuple[int, int, int, int]]] = []
        for wid, v in a.verifications.items():
            p_local = model.local_prob(v, a.dense.get(wid))
            if p_local < REGION_MIN_LOCAL:
                continue
            found = a.sscd.get(wid)
            p = model.combine(p_local, model.pdq_prob(a.pdq.get(wid)), model.clip_prob(a.clip.get(wid)),
                              model.sscd_prob(found[0] if found is not None else None))
            if p >= model.threshold:
                continue  # decided without it
            box = _region_box(v.polygon, w, h)
            if box is not None:
                open_.append((p_local, wid, box))
        chosen = sorted(open_, key=lambda r: -r[0])[:REGION_MAX]
        for _, wid, (x0, y0, x1, y1) in chosen:
            crop = replace(img, rgb=np.ascontiguousarray(rgb[y0:y1, x0:x1]), rgb_on_black=None,
                           width=x1 - x0, height=y1 - y0)
            hit = self.descriptor_candidates(crop, owner_ids=owner_ids, work_ids=work_ids, crops=False).get(wid)
            found = a.sscd.get(wid)
            if hit is not None and (found is None or hit[0] > found[0]):
                a.sscd[wid] = (hit[0], (x0, y0, x1, y1))
        return len(chosen)

    def analyse_decoded(
        self, img: DecodedImage, *, owner_ids: Sequence[int] | None = None,
        timings: dict[str, float] | None = None, work_ids: Sequence[int] | None = None,
    ) -> _Analysis:
        """Evidence for every candidate work; ``timings`` collects CPU seconds per stage."""
        clock = time.process_time
        t0 = clock()
        rgb = np.asarray(img.rgb)
        h, w = rgb.shape[:2]
        q = extract_features(rgb, balanced=True)
        t1 = clock()
        found = self._local_candidates(q, owner_ids, work_ids)
        t2 = clock()
        verifications: dict[int, Verification] = {}
        # Every alignment found for a work (its images, mirrored or not, and a refined
        # homography's similarity): the one kept is the one the calibrated model rates
        # highest once the dense check has seen it; without a plausible one, the best by _rank.
        options: dict[int, list[tuple[Verification, bool]]] = {}
        ranked: list[tuple[float, Correspondences, npt.NDArray[np.bool_]]] = []
        for corr in found:
            peak, mask = corr.consistent()
            if peak >= 4:
                ranked.append((_significance(peak, corr.q_xy.shape[0]), corr, mask))
        ranked.sort(key=lambda r: -r[0])
        for _, corr, mask in ranked[: self.verify_top]:
            sw = self.index.work(corr.work_id)
            if sw is None:
                continue
            v = verify(corr.w_xy[mask], corr.q_xy[mask], work_size=(sw.width, sw.height),
                       upload_size=(w, h), offered=corr.q_xy.shape[0])
            if v is None:
                continue
            options.setdefault(corr.work_id, []).append((v, corr.mirrored))
            if v.alternative is not None:
                options[corr.work_id].append((v.alternative, corr.mirrored))
            best = verifications.get(corr.work_id)
            if best is None or _rank(v) > _rank(best):
                verifications[corr.work_id] = v
        dense: dict[int, float] = {}
        gray: npt.NDArray[np.uint8] | None = None
        for wid, opts in options.items():
            sw = self.index.work(wid)
            if sw is None:
                continue
            best_p = -1.0
            for v, mir in opts:
                if not v.plausible or v.inliers < 4 or v.homography is None:
                    continue
                if gray is None:
                    gray = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), np.uint8)
                agreement = dense_agreement(self.index.thumbs(wid), (sw.width, sw.height), mir,
                                            v.homography, gray)
                p = self.model.local_prob(v, agreement)
                if p > best_p:
                    best_p = p
                    verifications[wid] = v
                    if agreement is None:
                        dense.pop(wid, None)
                    else:
                        dense[wid] = agreement
        t3 = clock()
        pdq = self._pdq_search(rgb, owner_ids, work_ids)
        if timings is not None:
            timings.update(features=t1 - t0, search=t2 - t1, verify=t3 - t2, pdq=clock() - t3)
        return _Analysis(verifications, pdq, w, h, img.scale, dense=dense)

    def _local_candidates(self, q: LocalFeatures, owner_ids: Sequence[int] | None,
                          work_ids: Sequence[int] | None) -> list[Correspondences]:
        """The best (work, mirror) images to verify, with their tentative correspondences.

        With ``candidates = "sparse"`` the works come from the sparse index and
        the correspondences from those works' postings; ``work_ids`` (a
        back-scan) names the works itself."""
        if self.candidates == "postings" or work_ids is not None:
            return self.index.search(q, top=self.search_top, owner_ids=owner_ids, work_ids=work_ids)
        assert self.sparse is not None
        self.index.refresh()
        vocab = self.index.vocab
        if vocab is None or not len(q):
            return []
        sparse = self.sparse

        def ask() -> tuple[list[int], bool]:
            return sparse.candidates(vocab, q, limit=self.sparse_top, owner_ids=owner_ids,
                                     n_coarse=self.index.n_coarse, n_fine=self.index.n_fine, n_sub=self.index.n_sub)

        ids, stale = ask()
        if stale:
            # Another process retrained without rewriting the words (or is doing so now).
            self._sparse_rewrite()
            ids, _ = ask()
        if not ids:
            return []
        return self.index.search(q, top=self.search_top, owner_ids=owner_ids, work_ids=ids)

    def score(self, a: _Analysis, img: DecodedImage | None = None, limit: int = 10) -> list[Candidate]:
        model = self.model
        out: list[Candidate] = []
        for wid in set(a.verifications) | set(a.pdq) | set(a.clip) | set(a.sscd):
            sw = self.index.work(wid)
            if sw is None:
                continue
            v = a.verifications.get(wid)
            d = a.pdq.get(wid)
            cos = a.clip.get(wid)
            p_local = model.local_prob(v, a.dense.get(wid))
            p_pdq = model.pdq_prob(d)
            p_clip = model.clip_prob(cos)
            found = a.sscd.get(wid)
            p_sscd = model.sscd_prob(found[0] if found is not None else None)
            s = model.combine(p_local, p_pdq, p_clip, p_sscd)
            if s < 1e-4:
                continue
            signals: dict[str, float] = {"local": p_local, "pdq": p_pdq}
            if cos is not None:
                signals["clip"] = cos
            if found is not None:
                signals["sscd"] = found[0]
                signals["sscd_p"] = p_sscd
            region = None
            if v is not None:
                signals.update(inliers=float(v.inliers), tentative=float(v.tentative),
                               coverage=v.coverage)
                if wid in a.dense:
                    signals["dense"] = a.dense[wid]
                if v.plausible and p_local >= p_pdq:
                    k = 1.0 / a.scale if a.scale > 0 else 1.0
                    region = [[x * k, y * k] for x, y in v.polygon]
            if d is not None:
                signals["pdq_distance"] = float(d)
                if region is None and p_pdq > p_local:
                    # A PDQ match is a copy of the whole frame.
                    k = 1.0 / a.scale if a.scale > 0 else 1.0
                    fw, fh = a.width * k, a.height * k
                    region = [[0.0, 0.0], [fw, 0.0], [fw, fh], [0.0, fh]]
            if region is None and found is not None and p_sscd > max(p_local, p_pdq):
                # The descriptor's best view: the whole frame or the crop that holds the work.
                k = 1.0 / a.scale if a.scale > 0 else 1.0
                x0, y0, x1, y1 = (c * k for c in found[1])
                region = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
            out.append(Candidate(wid, sw.owner_id, s, s >= model.threshold, signals, region))
        out = self._explain_away(out, model.threshold)
        out.sort(key=lambda c: -c.score)
        return out[:limit]

    @staticmethod
    def _explain_away(cands: list[Candidate], threshold: float) -> list[Candidate]:
        """Demote a work whose region another, far better verified work explains.

        Registries hold near-duplicates (recoloured variants of one drawing);
        a copy of one verifies against the other too, with far fewer inliers
        on the same region. When a candidate's region lies mostly inside a
        stronger candidate's region and it has less than half its inliers, its
        score is scaled by the inlier ratio (and decided again).
        """
        strong = sorted((c for c in cands if c.region is not None and "inliers" in c.signals),
                        key=lambda c: -c.signals["inliers"])
        out: list[Candidate] = []
        for c in cands:
            factor = 1.0
            if c.region is not None and "inliers" in c.signals:
                for s in strong:
                    if s is c or s.signals["inliers"] <= 2.0 * c.signals["inliers"]:
                        continue
                    if _overlap(c.region, s.region) >= 0.5:
                        factor = c.signals["inliers"] / s.signals["inliers"]
                        break
            if factor < 1.0:
                sc = c.score * factor
                sig = dict(c.signals, explained_by=float(s.work_id))
                out.append(Candidate(c.work_id, c.owner_id, sc, sc >= threshold, sig, c.region))
            else:
                out.append(c)
        return out

    def _pdq_search(self, rgb: npt.NDArray[np.uint8], owner_ids: Sequence[int] | None,
                    work_ids: Sequence[int] | None = None) -> dict[int, int]:
        self._sync_pdq()
        if not len(self._pdq):
            return {}
        h, quality = _pdq_bits(rgb, dihedral=False)
        if quality < 50:
            return {}
        return self._pdq.search(h[0], PDQ_RELEVANT, owner_ids, work_ids)


    def _sync_pdq(self) -> None:
        """Bring the PDQ index in step with the local index: only the works added, replaced or
        removed since the last call change it (one registration at 100,000 works costs no
        rebuild; docs/benchmarks.md, "Registry changes at scale")."""
        key = self.index.generation
        if key == self._pdq_key:
            return
        works, seen = self.index.works, self._pdq_works
        for wid in [w for w in seen if w not in works]:
            self._pdq.remove(wid)
            del seen[wid]
        for wid, sw in works.items():
            if seen.get(wid) is not sw:
                seen[wid] = sw
                if sw.pdq.shape[0]:
                    self._pdq.add(wid, sw.owner_id, sw.pdq)
                else:
                    self._pdq.remove(wid)
        self._pdq_key = key


def _overlap(a: list[list[float]], b: list[list[float]] | None) -> float:
    """Area of the intersection over the smaller polygon's area (convex polygons)."""
    if b is None:
        return 0.0
    pa = np.asarray(a, np.float32).reshape(-1, 1, 2)
    pb = np.asarray(b, np.float32).reshape(-1, 1, 2)
    area_a, area_b = abs(cv2.contourArea(pa)), abs(cv2.contourArea(pb))
    if min(area_a, area_b) <= 0:
        return 0.0
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    return float(inter) / float(min(area_a, area_b))


def _region_box(polygon: list[list[float]], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The bounding box of an aligned outline with :data:`REGION_MARGIN`, clipped to the
    image; None when under 16 pixels a side (too little for the descriptor)."""
    poly = np.asarray(polygon, np.float64)
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    margin = REGION_MARGIN * (hi - lo)
    x0, y0 = (max(0, int(c)) for c in lo - margin)
    x1, y1 = min(width, int(hi[0] + margin[0]) + 1), min(height, int(hi[1] + margin[1]) + 1)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    return x0, y0, x1, y1


def _significance(peak: int, tentative: int) -> float:
    """How far a weak-consistency peak stands above what chance would pile up.

    Chance correspondences spread over the (rotation, scale) histogram; about
    one in :data:`CHANCE_CELLS` falls in any 3x3 window. A work offering many
    tentative matches (big, busy, common words) collects a higher peak by
    chance than a small logo does, so raw peaks rank true small logos late.
    """
    expected = tentative / CHANCE_CELLS
    return (peak - expected) / math.sqrt(expected + 1.0)


def _rank(v: Verification) -> tuple[bool, int, float]:
    return (v.plausible, v.inliers, v.inlier_ratio)


def build_engine(
    settings: Settings, *, maintenance: MaintenanceHook | None = None, feature_store: FeatureStore | None = None,
    documents: DocumentStore | None = None, claim_vectors: bool = False,
) -> Engine:
    """The engine for these settings; ``maintenance`` as in :attr:`Engine.maintenance`.
    Its local-feature registry is ``feature_store``, or the one
    :func:`matching.store.build_feature_store` builds for ``settings.shared.kind``;
    the calibration comes from ``documents``, by default the store
    ``settings.shared.kind`` names. An index whose vectors another model computed
    is refused (:func:`matching.index.vectors.check_vector_keys`); ``claim_vectors``
    (``artwatch index rebuild``) records this model instead."""
    from storage.documents import build_document_store

    limit_native_threads()
    if documents is None:
        documents = build_document_store(settings)
    vectors = None
    m = settings.matching
    sparse = None
    from matching.index.vectors import settings_sparse_specs

    sparse_specs = settings_sparse_specs(m)
    if m.use_embedder or m.descriptor:
        from matching.index import build_index
        from matching.index.vectors import (
            UPLOAD_CROPS,
            WorkVectors,
            check_vector_keys,
            settings_specs,
            settings_vector_keys,
        )
        from matching.signals.clip import build_embedder
        from matching.signals.sscd import build_descriptor

        # With the embed stage on, CLIP runs on the GPU workers only: this
        # process opens the index with the vectors' width and loads no CLIP
        # model. The descriptor runs here, on the CPU (ONNX Runtime).
        embedder = build_embedder(m, remote=settings.workers.embed_stage)
        descriptor = build_descriptor(m.descriptor, side=m.descriptor_side, threads=m.descriptor_threads,
                                      resize=m.descriptor_resize)
        crop_descriptor = build_descriptor(m.descriptor, side=m.descriptor_crop_side, threads=m.descriptor_threads,
                                           resize=m.descriptor_resize)
        crops = UPLOAD_CROPS if m.descriptor_crops else ()
        check_vector_keys(documents, settings_vector_keys(m), claim=claim_vectors)
        vectors = WorkVectors(build_index(settings, settings_specs(m), sparse_specs), embedder, descriptor=descriptor,
                              crop_descriptor=crop_descriptor, crops=crops)
    if sparse_specs:
        from matching.index import build_index
        from matching.sparse_words import SparseWords

        # One collection: the works' dense points and their words side by side.
        sparse = SparseWords(vectors.index if vectors is not None else build_index(settings, [], sparse_specs))
    if feature_store is None:
        from matching.store import build_feature_store

        feature_store = build_feature_store(settings)
    return Engine(Path(settings.data_dir), default_threshold=settings.matching.threshold, vectors=vectors,
                  maintenance=maintenance, feature_store=feature_store,
                  candidates=settings.matching.candidates, sparse=sparse,
                  documents=documents, load_threads=settings.matching.load_threads)
