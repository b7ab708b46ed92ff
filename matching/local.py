"""Local features and candidate retrieval over them.

Registered works are described by RootSIFT keypoints extracted from several
renderings of the work (both mirror states, two scales, and for logos with
alpha both white and black backgrounds), so a copy that is flipped, shrunk or
pasted onto a dark photo still shares keypoints with one rendering.

Retrieval never scans the registry: descriptors are quantised with a
two-level k-means vocabulary trained on the registry itself (like an IVF
index) and refined with a 64-bit Hamming-embedding signature of the residual.
Once the registry averages more than :data:`POSTINGS_PER_WORD` postings per
word, its next retrain adds a third level (up to :data:`MAX_SUB_WORDS`
sub-words per word), so the postings a query visits stay bounded as the
registry grows. An upload's descriptors look up their words, keep postings
within a Hamming radius (at most about :data:`HITS_PER_KEYPOINT` of the
closest per keypoint), and vote for (work, mirror) *images*. The surviving correspondences
of the best-voted images go straight to geometric verification
(:mod:`matching.verify`), so no work's descriptors are read at query time.

Persistence (``DIR`` = ``settings.data_dir/features``):

- ``works/<id>.npz``: the work's keypoints and descriptors (source of truth);
- ``vocab.npz``: the vocabulary, with a version id;
- ``journal.log``: append-only lines ``add <id>``, ``del <id>``,
  ``vocab <version> <works>``, written under ``journal.lock`` (held only to
  append: a retrain runs under ``retrain.lock``). Every process replays
  the journal from the offset it has read, so works registered by another
  process become searchable on its next query.
- ``snapshots/<version>.json`` and ``snapshots/<version>-<offset>-<id>/``:
  the postings of every work under vocabulary ``<version>``, with the journal
  offset they cover. A process that starts (or meets a new vocabulary) maps
  the snapshot's arrays and replays only the journal after that offset,
  instead of re-reading and re-quantising every work (about 20 ms per work).
  Processes on one machine share the mapped pages. A retrain quantises every
  work and snapshots the new vocabulary before announcing it, so the other
  processes switch in a fraction of a second. A snapshot is only a cache:
  when it is missing or unreadable the works are read again and a new
  snapshot is written.

Maintenance (a retrain, a snapshot write) is due at thresholds a registration
or a query crosses. :attr:`LocalIndex.maintenance` decides where it runs: left
None, in this process at once (a library user, the benchmark harness); a
service passes a hook that hands it to a queue of its own (``workers.maintenance``),
and a worker runs it later with :meth:`LocalIndex.run_maintenance`, so no
request waits for minutes of retraining.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import portalocker

from matching._scan import (
    distinct_best,
    group_kmeans,
    hamming_hits,
    nearest,
    nearest_by_cell,
    rotation_scale_peak,
)

__all__ = [
    "Correspondences",
    "FeatureStore",
    "LocalFeatures",
    "LocalIndex",
    "MaintenanceHook",
    "MaintenanceJob",
    "Vocabulary",
    "extract_features",
    "extract_work_features",
    "limit_native_threads",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]

#: Pixel area at which an upload is described. SIFT doubles the image
#: internally, so its finest octave works at 640x480. SIFT's cost grows with
#: the area: 320x240 with 1100 keypoints costs about 0.75x of 400x300 with
#: 1400 per upload, with the dev set's recall and precision unchanged within
#: a few pairs (docs/benchmarks.md, session 5).
UPLOAD_AREA = 320 * 240
UPLOAD_MAX_KP = 1100
UPLOAD_CONTRAST = 0.02
#: Renderings of a work: areas for the two scales.
WORK_AREAS = (512 * 384, 256 * 192, 128 * 96)
WORK_MAX_KP = (1500, 600, 250)
HE_BITS = 64
#: Postings farther than this (of 64 bits) from the query signature are ignored.
HE_RADIUS = 22
#: A query keypoint keeps about this many of its closest postings (per segment).
#: Only busy words in a large registry reach it: there, most postings within the
#: radius are chance ones.
HITS_PER_KEYPOINT = 64
_ROOT_SCALE = 512.0
#: Postings of one work closer than this (work pixels) are the same place
#: (the work is described at several scales and on two backgrounds).
SAME_PLACE_PX = 6.0
AMBIGUITY_MARGIN = 3
#: Work thumbnails kept in memory per process (about 16-32 KiB each).
THUMB_CACHE = 2048
#: A word whose postings would average more than this is split into sub-words
#: (the vocabulary's third level, :meth:`Vocabulary.with_sublevel`): the postings
#: a query visits then stop growing with the registry.
POSTINGS_PER_WORD = 256
MAX_SUB_WORDS = 8
#: Descriptors sampled per work to train the sub-words.
SUB_SAMPLE_PER_WORK = 200
#: A process writes a new postings snapshot once it has applied this many
#: journal changes since its state was last snapshotted, or a quarter of the
#: registry if that is more (a snapshot rewrites every posting).
SNAPSHOT_EVERY = 64
SNAPSHOT_FORMAT = 1

#: The maintenance an index can find due.
MaintenanceJob = Literal["retrain", "snapshot"]
#: Called when a job falls due; True when it took the job (queued it, or noted
#: it for later), False to have the index run it here and now.
MaintenanceHook = Callable[[MaintenanceJob], bool]


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one image (or one mirror state of a work).

    ``xy`` is in the pixel frame of the image described (for a mirrored work
    rendering, the mirrored frame); ``desc`` is RootSIFT scaled to uint8.
    """

    xy: F32
    scale: F32
    angle: F32
    desc: U8
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @staticmethod
    def empty(width: int, height: int) -> LocalFeatures:
        return LocalFeatures(
            np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
            np.zeros((0, 128), np.uint8), width, height,
        )

    @staticmethod
    def concat(parts: Sequence[LocalFeatures]) -> LocalFeatures:
        if not parts:
            raise ValueError("nothing to concatenate")
        return LocalFeatures(
            np.concatenate([p.xy for p in parts]), np.concatenate([p.scale for p in parts]),
            np.concatenate([p.angle for p in parts]), np.concatenate([p.desc for p in parts]),
            parts[0].width, parts[0].height,
        )


def limit_native_threads() -> None:
    """One native thread for OpenCV and OpenBLAS in this process.

    The engine runs one process per core; native thread pools on top of that
    only add spinning (OpenBLAS made small matrix products 6x dearer here).
    """
    cv2.setNumThreads(1)
    try:
        import ctypes

        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ".so" in ln}
        for path in paths:
            lib = ctypes.CDLL(path)
            for fn in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads"):
                if hasattr(lib, fn):
                    getattr(lib, fn)(1)
                    break
    except OSError:  # pragma: no cover - not Linux or no OpenBLAS: nothing to limit
        pass


def _gray(rgb: npt.NDArray[np.uint8]) -> U8:
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


_SIFT_CACHE: dict[tuple[int, float], cv2.SIFT] = {}
#: SIFT's edge-response limit. The default (10) drops most corners of flat
#: logo shapes; 60 keeps them (RANSAC copes with their weaker localisation).
EDGE_THRESHOLD = 60.0
#: Base blur. Below SIFT's 1.6, corners of flat shapes survive at small scale;
#: measured on synthetic pastes of flat logos: +24% verified pairs, and faster.
SIGMA = 1.0
#: Upload keypoints are detected at this fraction of the contrast threshold
#: and then spread over this grid (half the budget shared equally by cells).
BALANCED_CONTRAST = 0.5
BALANCE_GRID = (8, 6)
#: Lowest contrast threshold :func:`extract_features` falls back to.
MIN_CONTRAST = 0.003
#: An upload with less than this share of busy pixels (see :func:`_busy_share`)
#: is described in one SIFT pass (``detectAndCompute``): it rarely has more
#: keypoints than the budget, and a second pass would build the scale space
#: again. Busier uploads detect first and compute descriptors for the balanced
#: selection only. Either way the keypoints are the same, and so are the
#: descriptors unless no kept keypoint lies in SIFT's upsampled octave (then
#: ``compute`` skips that octave: 2 of 300 dev uploads).
ONE_PASS_BUSY = 0.35


def _sift(n: int, contrast: float) -> cv2.SIFT:
    key = (n, contrast)
    det = _SIFT_CACHE.get(key)
    if det is None:
        det = cv2.SIFT_create(  # type: ignore[attr-defined]
            nfeatures=n, contrastThreshold=contrast, edgeThreshold=EDGE_THRESHOLD,
                              sigma=SIGMA)
        _SIFT_CACHE[key] = det
    return det


def _busy_share(gray: U8) -> float:
    """Share of pixels whose 4-neighbour Laplacian exceeds 8 grey levels: a
    cheap (0.1 ms) predictor of how many keypoints SIFT will find."""
    lap = cv2.Laplacian(gray, cv2.CV_16S, ksize=1)
    return float(np.count_nonzero(np.abs(lap) > 8)) / float(lap.size)


def _balanced(kps: Sequence[cv2.KeyPoint], w: int, h: int, budget: int) -> list[cv2.KeyPoint]:
    """At most ``budget`` keypoints spread over the image: each cell of a
    :data:`BALANCE_GRID` grid first keeps its strongest share, the rest of
    the budget goes to the strongest of the others."""
    return [kps[int(i)] for i in _balanced_index(kps, w, h, budget)]


def _balanced_index(kps: Sequence[cv2.KeyPoint], w: int, h: int, budget: int) -> npt.NDArray[np.int64]:
    """Indices (ascending) of the keypoints :func:`_balanced` keeps."""
    if len(kps) <= budget:
        return np.arange(len(kps), dtype=np.int64)
    gx, gy = BALANCE_GRID
    resp = np.array([k.response for k in kps], np.float32)
    pts = np.array([k.pt for k in kps], np.float32)
    cell = (np.minimum(gy - 1, (pts[:, 1] * gy / h).astype(np.int64)) * gx
            + np.minimum(gx - 1, (pts[:, 0] * gx / w).astype(np.int64)))
    order = np.lexsort((-resp, cell))
    cs = cell[order]
    first = np.searchsorted(cs, cs, side="left")
    rank = np.arange(cs.shape[0]) - first
    quota = budget // (2 * gx * gy)
    take = np.zeros(len(kps), bool)
    take[order[rank < quota]] = True
    rest = np.flatnonzero(~take)
    extra = budget - int(take.sum())
    if extra > 0:
        take[rest[np.argsort(-resp[rest])[:extra]]] = True
    return np.flatnonzero(take).astype(np.int64)


def extract_features(
    rgb: npt.NDArray[np.uint8], *, area: int | None = None, max_kp: int | None = None,
    contrast: float | None = None, min_kp: int | None = None, balanced: bool = False,
) -> LocalFeatures:
    """RootSIFT keypoints of an RGB image, coordinates in its own pixel frame.

    The image is first resized (down only) to about ``area`` pixels; SIFT's
    own 2x upsampling then recovers detail for small images. An image that
    yields fewer than ``min_kp`` keypoints (default: a sixth of ``max_kp``) is
    described again with the contrast threshold lowered (down to
    :data:`MIN_CONTRAST`): smooth wallpapers and faded copies otherwise give
    SIFT nothing to work with.

    ``balanced`` (uploads) detects at half the contrast threshold and spreads
    the keypoint budget over the image (:func:`_balanced`): in a busy photo
    the strongest responses all sit in the background, and a pasted logo or
    a faded artwork would keep none of its own.
    """
    area = UPLOAD_AREA if area is None else area
    max_kp = UPLOAD_MAX_KP if max_kp is None else max_kp
    contrast = UPLOAD_CONTRAST if contrast is None else contrast
    h, w = rgb.shape[:2]
    gray = _gray(rgb)
    s = min(1.0, float(np.sqrt(area / float(w * h))))
    if s < 1.0:
        gray = np.asarray(cv2.resize(gray, (max(8, round(w * s)), max(8, round(h * s))),
                                     interpolation=cv2.INTER_AREA), np.uint8)
    want = max_kp // 6 if min_kp is None else min_kp
    kps: Sequence[cv2.KeyPoint]
    desc: Any
    if balanced:
        det = _sift(0, contrast * BALANCED_CONTRAST)
        if _busy_share(gray) < ONE_PASS_BUSY:
            kps, desc = det.detectAndCompute(gray, None)
            if len(kps) > max_kp:
                keep = _balanced_index(kps, gray.shape[1], gray.shape[0], max_kp)
                kps, desc = [kps[int(i)] for i in keep], desc[keep]
        else:
            chosen = _balanced(det.detect(gray, None), gray.shape[1], gray.shape[0], max_kp)
            kps, desc = det.compute(gray, chosen) if chosen else ((), None)
    else:
        kps, desc = _sift(max_kp, contrast).detectAndCompute(gray, None)
    while len(kps) < want and contrast > MIN_CONTRAST:
        contrast = max(MIN_CONTRAST, contrast / 3.3)
        kps, desc = _sift(max_kp, contrast).detectAndCompute(gray, None)
    if desc is None or not kps:
        return LocalFeatures.empty(w, h)
    sx = w / gray.shape[1]
    sy = h / gray.shape[0]
    xy = np.array([k.pt for k in kps], np.float32)
    xy[:, 0] = (xy[:, 0] + 0.5) * sx - 0.5
    xy[:, 1] = (xy[:, 1] + 0.5) * sy - 0.5
    scale = np.array([k.size for k in kps], np.float32) * np.float32(sx)
    angle = np.array([k.angle for k in kps], np.float32)
    d = desc.astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7
    root = np.clip(np.sqrt(d) * _ROOT_SCALE, 0, 255).astype(np.uint8)
    return LocalFeatures(xy, scale, angle, root, w, h)


def extract_work_features(
    renderings: Sequence[npt.NDArray[np.uint8]],
) -> tuple[LocalFeatures, LocalFeatures]:
    """Keypoints of a work for both mirror states: ``(direct, mirrored)``.

    ``renderings`` are the same work on different backgrounds (same size).
    Each is described at two scales; the mirrored state is extracted from the
    mirrored pixels (SIFT is not mirror invariant), frame mirrored too.
    """
    out: list[LocalFeatures] = []
    for flip in (False, True):
        parts: list[LocalFeatures] = []
        for rgb in renderings:
            img = np.ascontiguousarray(rgb[:, ::-1]) if flip else rgb
            for area, n in zip(WORK_AREAS, WORK_MAX_KP, strict=True):
                f = extract_features(img, area=area, max_kp=n, contrast=0.02)
                if len(f):
                    parts.append(f)
        h, w = renderings[0].shape[:2]
        out.append(LocalFeatures.concat(parts) if parts else LocalFeatures.empty(w, h))
    return out[0], out[1]


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """Two-level k-means vocabulary with Hamming-embedding projection, and for
    large registries a third level that splits each word into sub-words.

    A posting's word id is ``(coarse * k2 + fine) * k3 + sub``. The Hamming
    signature is always taken against the fine centroid, so the sub-level only
    partitions postings: a descriptor and a posting in the same sub-word compare
    exactly as they would without it.
    """

    coarse: F32  # (k1, 128)
    fine: F32  # (k1, k2, 128); unused slots are +inf-far (large values)
    proj: F32  # (64, 128)
    version: str
    sub: F32 | None = None  # (k1 * k2, k3, 128), unused slots far; None: k3 = 1

    @property
    def k2(self) -> int:
        return int(self.fine.shape[1])

    @property
    def k3(self) -> int:
        return 1 if self.sub is None else int(self.sub.shape[1])

    @property
    def size(self) -> int:
        """Word ids in use are below this (sub-words included)."""
        return int(self.fine.shape[0] * self.fine.shape[1]) * self.k3

    def with_sublevel(self, desc: U8, postings: int) -> Vocabulary:
        """This vocabulary with sub-words trained on ``desc`` (a sample of the
        registry's descriptors) when ``postings`` (how many the registry holds)
        would average more than :data:`POSTINGS_PER_WORD` per word; itself
        otherwise. The number of sub-words is a power of two, at most
        :data:`MAX_SUB_WORDS`."""
        _, fnorm = self._norms
        words = int((fnorm < 1e7).sum())  # slots holding a centroid
        want = postings / max(1, words) / POSTINGS_PER_WORD
        if want <= 1.0 or desc.shape[0] == 0:
            return replace(self, sub=None) if self.sub is not None else self
        k3 = min(MAX_SUB_WORDS, 1 << int(np.ceil(np.log2(want))))
        plain = replace(self, sub=None)
        word = np.empty(desc.shape[0], np.int64)
        for i in range(0, desc.shape[0], 65_536):  # in chunks: float32 copies are 4x the size
            rows, _, w = plain.assign(desc[i : i + 65_536])
            word[i + rows] = w
        order = np.argsort(word, kind="stable")
        offsets = np.searchsorted(word[order], np.arange(plain.size + 1)).astype(np.int64)
        sub = group_kmeans(desc[order].astype(np.float32), offsets, k3)
        return replace(self, sub=sub, version=uuid.uuid4().hex)

    @staticmethod
    def train(desc: U8, *, seed: int = 0) -> Vocabulary:
        """Train on a sample of registry descriptors; size follows the sample."""
        rng = np.random.default_rng(seed)
        x = desc.astype(np.float32)
        if x.shape[0] > 300_000:
            x = x[rng.choice(x.shape[0], 300_000, replace=False)]
        n = x.shape[0]
        words = int(np.clip(n // 12, 64, 65_536))
        k1 = int(np.clip(round(np.sqrt(words)), 4, 256))
        k2 = k1
        cv2.setRNGSeed(seed)
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 12, 0.5)
        _, lab, coarse = cv2.kmeans(x, k1, None, crit, 1, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
        lab = lab.ravel()
        fine = np.full((k1, k2, 128), 1e4, np.float32)
        for c in range(k1):
            members = x[lab == c]
            if members.shape[0] == 0:
                continue
            k = min(k2, max(1, members.shape[0] // 4))
            if k == 1:
                fine[c, 0] = members.mean(axis=0)
                continue
            _, _, cent = cv2.kmeans(members, k, None, crit, 1, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
            fine[c, :k] = cent
        q, _ = np.linalg.qr(rng.standard_normal((128, 128)).astype(np.float64))
        proj = q[:HE_BITS].astype(np.float32)
        return Vocabulary(coarse.astype(np.float32), fine, proj, uuid.uuid4().hex)

    @cached_property
    def _norms(self) -> tuple[F32, F32]:
        """Squared norms of the coarse and fine centroids (computed once)."""
        return ((self.coarse * self.coarse).sum(1)[None, :].astype(np.float32),
                (self.fine * self.fine).sum(2).astype(np.float32))

    @cached_property
    def _transposed(self) -> tuple[F32, F32]:
        """Coarse and fine centroids as ``(cells, 128, per cell)`` for :func:`nearest_by_cell`."""
        return (np.ascontiguousarray(self.coarse.T[None]),
                np.ascontiguousarray(self.fine.transpose(0, 2, 1)))

    @cached_property
    def _projected_fine(self) -> F32:
        """``proj @ fine`` per word, ``(k1 * k2, 64)``: a residual's projection is the
        descriptor's minus its word's."""
        return np.ascontiguousarray((self.fine.reshape(-1, 128) @ self.proj.T).astype(np.float32))

    @cached_property
    def _sub_norms(self) -> F32:
        assert self.sub is not None
        return np.asarray((self.sub * self.sub).sum(2), np.float32)

    def assign(self, desc: U8, *, n_coarse: int = 1, n_fine: int = 1, n_sub: int = 1) -> tuple[I32, U64, I32]:
        """Words and signatures of descriptors, with multiple assignment
        (``n_sub`` sub-words per word when the vocabulary has a third level).

        Returns ``(rows, sigs, words)``: ``rows[i]`` is the descriptor index of
        the i-th (descriptor, word) pair. Pairs come grouped by coarse cell
        (ascending), then by descriptor, then nearest word first.
        """
        x = desc.astype(np.float32)
        n = x.shape[0]
        if n == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.uint64), np.zeros(0, np.int32)
        k1 = self.coarse.shape[0]
        cnorm, fnorm = self._norms
        coarse_t, fine_t = self._transposed
        nc = min(n_coarse, k1)
        c_idx = nearest_by_cell(x, np.arange(n, dtype=np.int64), np.zeros(n, np.int64), coarse_t, cnorm, nc)
        cells = c_idx.ravel()
        order = np.argsort(cells, kind="stable")
        rows_c, cells = order // nc, cells[order]
        nf = min(n_fine, self.k2)
        f_idx = nearest_by_cell(x, rows_c, cells, fine_t, fnorm, nf).ravel()
        rows = np.repeat(rows_c, nf)
        cell_of = np.repeat(cells, nf)
        words = cell_of * self.k2 + f_idx
        bits = (x @ self.proj.T)[rows] > self._projected_fine[words]
        sigs = np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel().astype(np.uint64)
        if self.sub is not None:
            ns = min(n_sub, self.k3)
            s_idx = nearest(x, rows, words, self.sub, self._sub_norms, ns).ravel()
            rows, sigs = np.repeat(rows, ns), np.repeat(sigs, ns)
            words = np.repeat(words, ns) * self.k3 + s_idx
        return rows.astype(np.int32), sigs, words.astype(np.int32)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "coarse": self.coarse, "fine": self.fine, "proj": self.proj, "version": np.array(self.version)}
        if self.sub is not None:
            arrays["sub"] = self.sub
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        _atomic_write(path, buf.getvalue())

    @staticmethod
    def load(path: Path) -> Vocabulary:
        with np.load(path) as z:
            sub = z["sub"] if "sub" in z.files else None
            return Vocabulary(z["coarse"], z["fine"], z["proj"], str(z["version"]), sub)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- stored works


@dataclass(frozen=True)
class StoredWork:
    """What the index keeps about one registered work."""

    work_id: int
    owner_id: int
    kind: str
    width: int
    height: int
    direct: LocalFeatures
    mirrored: LocalFeatures
    #: PDQ hashes of the work's dihedral variants (and renderings), (k, 32) uint8.
    pdq: U8 = field(default_factory=lambda: np.zeros((0, 32), np.uint8))
    #: Grey thumbnails of the renderings, (k, h, w) uint8 (see :mod:`matching.dense`).
    thumbs: U8 = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))


class FeatureStore:
    """Per-work feature files plus the journal other processes replay."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.works_dir = root / "works"
        self.works_dir.mkdir(parents=True, exist_ok=True)
        self.journal = root / "journal.log"
        self.lock_path = root / "journal.lock"
        self.vocab_path = root / "vocab.npz"
        self.retrain_lock_path = root / "retrain.lock"
        self.snapshots_dir = root / "snapshots"
        self.snapshot_lock_path = root / "snapshot.lock"

    def snapshot_pointer(self, version: str) -> Path:
        """The file naming the current snapshot made under vocabulary ``version``."""
        return self.snapshots_dir / f"{version}.json"

    def path(self, work_id: int) -> Path:
        return self.works_dir / f"{int(work_id)}.npz"

    def write(self, w: StoredWork) -> None:
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
            arrays[f"{tag}_desc"] = f.desc
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        _atomic_write(self.path(w.work_id), buf.getvalue())

    def read(self, work_id: int) -> StoredWork | None:
        try:
            z = np.load(self.path(work_id))
        except FileNotFoundError:
            return None
        with z:
            wid, owner, width, height = (int(v) for v in z["meta"])
            feats = []
            for tag in ("d", "m"):
                feats.append(LocalFeatures(z[f"{tag}_xy"], z[f"{tag}_scale"], z[f"{tag}_angle"],
                                           z[f"{tag}_desc"], width, height))
            thumbs = z["thumbs"] if "thumbs" in z.files else np.zeros((0, 0, 0), np.uint8)
            return StoredWork(wid, owner, str(z["kind"]), width, height, feats[0], feats[1], z["pdq"], thumbs)

    def read_thumbs(self, work_id: int) -> U8:
        """Only the thumbnails of a stored work (empty when absent)."""
        try:
            z = np.load(self.path(work_id))
        except FileNotFoundError:
            return np.zeros((0, 0, 0), np.uint8)
        with z:
            return z["thumbs"] if "thumbs" in z.files else np.zeros((0, 0, 0), np.uint8)

    def remove(self, work_id: int) -> None:
        self.path(work_id).unlink(missing_ok=True)

    def stored_ids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.works_dir.glob("*.npz"))

    def append(self, lines: Iterable[str]) -> None:
        text = "".join(f"{line}\n" for line in lines)
        with portalocker.Lock(str(self.lock_path), timeout=60), \
                open(self.journal, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    def lock(self) -> portalocker.Lock:
        return portalocker.Lock(str(self.lock_path), timeout=600)


# --------------------------------------------------------------------------- index


@dataclass
class Correspondences:
    """Tentative matches between an upload and one (work, mirror) image."""

    work_id: int
    mirrored: bool
    votes: float
    q_xy: F32  # upload keypoints (upload frame)
    w_xy: F32  # work keypoints (work frame, mirrored if ``mirrored``)
    hamming: I32
    d_angle: F32  # keypoint orientation difference, degrees in [0, 360)
    d_logscale: F32  # log2(upload keypoint size / work keypoint size)

    def consistent(self, *, angle_bins: int = 18, scale_bin: float = 0.5) -> tuple[int, npt.NDArray[np.bool_]]:
        """Weak geometric consistency: the densest (rotation, scale) cell.

        Returns the number of correspondences agreeing with the dominant
        rotation and scale change (3x3 neighbourhood of histogram cells), and
        their mask. A true copy concentrates there; chance matches spread out.
        """
        if self.q_xy.shape[0] == 0:
            return 0, np.zeros(0, bool)
        return rotation_scale_peak(self.d_angle, self.d_logscale, angle_bins, scale_bin)


@dataclass
class _Segment:
    """Postings sorted by word (CSR)."""

    offsets: npt.NDArray[np.int64]
    image: I32
    sig: U64
    xy: F32
    scale_angle: npt.NDArray[np.float16]

    @staticmethod
    def build(n_words: int, words: I32, image: I32, sig: U64, xy: F32,
              scale_angle: npt.NDArray[np.float16]) -> _Segment:
        order = np.argsort(words, kind="stable")
        w = words[order]
        offsets = np.searchsorted(w, np.arange(n_words + 1)).astype(np.int64)
        return _Segment(offsets, image[order], sig[order], xy[order], scale_angle[order])

    @property
    def n(self) -> int:
        return int(self.image.shape[0])


@dataclass
class _Quantised:
    words: I32
    sig: U64
    image: I32
    xy: F32
    scale_angle: npt.NDArray[np.float16]


@dataclass
class _ImageInfo:
    work_id: int
    owner_id: int
    mirrored: bool
    n_kp: int


@dataclass
class LocalIndex:
    """Inverted file over registered works' descriptors, shared through disk.

    ``refresh()`` is cheap (one ``stat``) when nothing changed; the engine
    calls it before each query.
    """

    store: FeatureStore
    n_coarse: int = 2
    n_fine: int = 2
    n_sub: int = 2
    vocab: Vocabulary | None = None
    _offset: int = 0
    _works: dict[int, StoredWork] = field(default_factory=dict)
    _images: list[_ImageInfo] = field(default_factory=list)
    _image_of: dict[tuple[int, bool], int] = field(default_factory=dict)
    _alive: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    _owner: I32 = field(default_factory=lambda: np.zeros(0, np.int32))
    _nkp: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _pending: list[_Quantised] = field(default_factory=list)
    _main: _Segment | None = None
    _delta: _Segment | None = None
    _delta_parts: list[_Quantised] = field(default_factory=list)
    _trained_on: int = 0
    _thumbs: dict[int, U8] = field(default_factory=dict)
    #: Journal changes applied since the state was last snapshotted or restored.
    _unsnapshotted: int = 0
    #: The vocabulary version the journal announced last, and the ones before it.
    _published_vocab: str = ""
    _stale_vocabs: set[str] = field(default_factory=set)
    #: A snapshot this process found damaged (replaced, never trusted).
    _damaged_snapshot: str = ""
    #: Bumped whenever the set of searchable works changes.
    generation: int = 0
    #: Where due maintenance goes (see the module doc); None: run it here.
    maintenance: MaintenanceHook | None = None

    # ---- registration (writer side)

    def add(self, work: StoredWork) -> None:
        """Persist a work's features and make them searchable everywhere."""
        self.store.write(work)
        self.store.append([f"add {work.work_id}"])
        self._maybe_train()
        self.refresh()

    def remove(self, work_id: int) -> None:
        self.store.remove(work_id)
        self.store.append([f"del {int(work_id)}"])
        self.refresh()

    def retrain_due(self) -> bool:
        """Whether the vocabulary should be trained again: when absent, again each
        time the registry has grown 4x until it was trained on 256 works (enough
        for stable words), and after that each time it has doubled, so the
        sub-words keep the postings per word near :data:`POSTINGS_PER_WORD` (a
        retrain re-reads every work: minutes at thousands of works)."""
        n_works = len(self.store.stored_ids())
        grow = 4 if self._trained_on < 256 else 2
        return n_works > 0 and (self.vocab is None or n_works >= grow * max(1, self._trained_on))

    def _maybe_train(self) -> None:
        self.refresh()
        if self.retrain_due() and not self._hand_off("retrain"):
            self.retrain(wait=False)

    def _hand_off(self, job: MaintenanceJob) -> bool:
        """Give due maintenance to the hook; False when it must run here."""
        return self.maintenance is not None and self.maintenance(job)

    def run_maintenance(self, job: MaintenanceJob) -> bool:
        """Run ``job`` here if it is still due (the maintenance task's body).

        Nothing is handed off meanwhile. A retrain waits for one under way in
        another process (``retrain.lock``), then runs only if the registry still
        calls for one, so a second task queued behind the first is a no-op. A
        snapshot is written when this process's postings are newer than the
        current one. Returns whether it did anything.
        """
        hook, self.maintenance = self.maintenance, None
        try:
            if job == "retrain":
                with portalocker.Lock(str(self.store.retrain_lock_path), timeout=3600):
                    self.refresh()
                    if not self.retrain_due():
                        return False
                    self._retrain_locked()
                    return True
            self.refresh()
            before = self._snapshot_offset()
            self._write_snapshot()
            return self._snapshot_offset() != before
        finally:
            self.maintenance = hook

    def _snapshot_offset(self) -> int | None:
        """The journal offset the current snapshot of this vocabulary covers."""
        if self.vocab is None:
            return None
        try:
            return int(json.loads(self.store.snapshot_pointer(self.vocab.version).read_text(encoding="utf-8"))
                       ["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def retrain(self, *, wait: bool = True) -> None:
        """Train a new vocabulary from the stored works (sampled), quantise every
        work under it, snapshot the postings, and only then publish it.

        Other processes keep searching under the old vocabulary meanwhile, and
        restore the snapshot when the journal announces the new one. The
        journal lock is taken only to publish, so registrations elsewhere never
        wait for a retrain. One retrain runs at a time (``retrain.lock``); with
        ``wait=False`` one already under way elsewhere makes this call a no-op.
        """
        try:
            with portalocker.Lock(str(self.store.retrain_lock_path), timeout=3600 if wait else 0,
                                  fail_when_locked=not wait):
                self._retrain_locked()
        except portalocker.AlreadyLocked:
            log.info("local index: another process is retraining the vocabulary")

    def _retrain_locked(self) -> None:
        self.refresh()
        ids = self.store.stored_ids()
        rng = np.random.default_rng(0)
        rng_sub = np.random.default_rng(1)
        per = max(50, 300_000 // max(1, len(ids)))
        sample: list[U8] = []
        sample_sub: list[U8] = []
        postings = 0
        for wid in ids:
            w = self.store.read(wid)
            if w is None:
                continue
            for f in (w.direct, w.mirrored):
                postings += len(f)
                if len(f) > per // 2:
                    sample.append(f.desc[rng.choice(len(f), per // 2, replace=False)])
                elif len(f):
                    sample.append(f.desc)
                take = min(len(f), SUB_SAMPLE_PER_WORK // 2)
                sample_sub.append(f.desc[rng_sub.choice(len(f), take, replace=False)])
        if not sample:
            return
        vocab = Vocabulary.train(np.concatenate(sample)).with_sublevel(np.concatenate(sample_sub), postings)
        # Every work under the new vocabulary, covering the journal this process
        # has read; what others append meanwhile is replayed on top.
        self._reload_all(vocab)
        self._write_snapshot(publishing=True)
        with self.store.lock():
            vocab.save(self.store.vocab_path)
            with open(self.store.journal, "a", encoding="utf-8") as fh:
                fh.write(f"vocab {vocab.version} {len(ids)}\n")
        if self._published_vocab and self._published_vocab != vocab.version:
            self._stale_vocabs.add(self._published_vocab)
        self._published_vocab = vocab.version
        with portalocker.Lock(str(self.store.snapshot_lock_path), timeout=600):
            self._remove_old_snapshots(vocab.version)
        log.info("local index: trained a %d-word vocabulary%s on %d works", vocab.size // vocab.k3,
                 f" with {vocab.k3} sub-words per word" if vocab.k3 > 1 else "", len(ids))

    # ---- reader side

    def refresh(self) -> None:
        """Apply journal lines written since the last call (by any process)."""
        try:
            size = self.store.journal.stat().st_size
        except FileNotFoundError:
            return
        if size <= self._offset:
            return
        with open(self.store.journal, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        lines = chunk[: end + 1].decode("utf-8").splitlines()
        vocab_lines = [i for i, ln in enumerate(lines) if ln.startswith("vocab ")]
        if vocab_lines:
            last = vocab_lines[-1]
            parts = lines[last].split()
            self._trained_on = int(parts[2]) if len(parts) > 2 else 0
            if self._published_vocab:
                self._stale_vocabs.add(self._published_vocab)
            self._stale_vocabs.update(lines[i].split()[1] for i in vocab_lines[:-1])
            self._stale_vocabs.discard(parts[1])
            self._published_vocab = parts[1]
            if self.vocab is None or self.vocab.version != parts[1]:
                restored = self._restore_snapshot()
                if restored is None:
                    self._reload_all()
                    self._snapshot_due()
                    return
                # The snapshot covers the journal up to its offset; replay the rest.
                self._offset = restored
                self.refresh()
                return
        touched: dict[int, str] = {}
        for ln in lines:
            op, _, arg = ln.partition(" ")
            if op in ("add", "del"):
                touched[int(arg)] = op
        for wid, op in touched.items():
            self._drop(wid)
            if op == "add":
                w = self.store.read(wid)
                if w is not None:
                    self._insert(w)
        self._unsnapshotted += len(touched)
        if self._unsnapshotted >= max(SNAPSHOT_EVERY, len(self._works) // 4):
            self._snapshot_due()

    def _snapshot_due(self) -> None:
        """Write a snapshot here, or hand it off. A handed-off snapshot is not
        asked for again until as many changes again have been applied."""
        if self.vocab is None or not self._works or self.vocab.version != self._published_vocab:
            return  # nothing _write_snapshot would write
        if self._hand_off("snapshot"):
            self._unsnapshotted = 0
        else:
            self._write_snapshot()

    def _reset(self, vocab: Vocabulary | None) -> None:
        """Forget every work; ``vocab`` becomes the vocabulary."""
        self.vocab = vocab
        self._works.clear()
        self._thumbs.clear()
        self.generation += 1
        self._images.clear()
        self._image_of.clear()
        self._alive = np.zeros(0, bool)
        self._owner = np.zeros(0, np.int32)
        self._nkp = np.zeros(0, np.int64)
        self._main = self._delta = None
        self._delta_parts.clear()
        self._pending.clear()

    def _reload_all(self, vocab: Vocabulary | None = None) -> None:
        """Re-read every work under the published vocabulary (or ``vocab``: the
        speed benchmark installs one trained for a registry it grows in memory)."""
        if vocab is None and self.store.vocab_path.exists():
            vocab = Vocabulary.load(self.store.vocab_path)
        self._reset(vocab)
        for wid in self.store.stored_ids():
            w = self.store.read(wid)
            if w is not None:
                self._insert(w)
        self._unsnapshotted = len(self._works)

    # ---- snapshots (a cache of the postings; see the module doc)

    def _write_snapshot(self, *, publishing: bool = False) -> None:
        """Save this process's postings with the journal offset they cover.

        Only for the vocabulary the journal announced last, or the one this
        process is about to announce (``publishing``: a retrain, which waits
        for another writer to finish). Otherwise skipped when another process
        is writing one. Failures only log: the works stay the source of truth.
        """
        vocab = self.vocab
        if vocab is None or not self._works:
            return
        if vocab.version != self._published_vocab and not publishing:
            # An older vocabulary than the journal's, or one that lives in memory
            # only (the speed benchmark).
            return
        try:
            with portalocker.Lock(str(self.store.snapshot_lock_path), timeout=600 if publishing else 0,
                                  fail_when_locked=not publishing):
                self._write_snapshot_locked(vocab)
        except portalocker.AlreadyLocked:
            return
        except OSError as exc:
            log.warning("local index: could not write a postings snapshot: %s", exc)

    def _write_snapshot_locked(self, vocab: Vocabulary) -> None:
        pointer = self.store.snapshot_pointer(vocab.version)
        try:
            meta = json.loads(pointer.read_text(encoding="utf-8"))
            if int(meta.get("offset", -1)) >= self._offset and meta.get("dir") != self._damaged_snapshot:
                self._unsnapshotted = 0
                return  # another process published these postings (or later ones)
        except (OSError, ValueError):
            pass
        self._pending_to_main()
        main = self._main
        assert main is not None
        ids = sorted(self._works)
        works = [self._works[i] for i in ids]
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "works": np.array([[w.work_id, w.owner_id, w.width, w.height] for w in works], np.int64),
            "kinds": np.array([w.kind for w in works], dtype=str),
            "pdq_counts": np.array([w.pdq.shape[0] for w in works], np.int64),
            "pdq": (np.concatenate([w.pdq for w in works]) if works else np.zeros((0, 32), np.uint8)),
            "img_work": np.array([i.work_id for i in self._images], np.int64),
            "img_owner": np.array([i.owner_id for i in self._images], np.int64),
            "img_mirrored": np.array([i.mirrored for i in self._images], bool),
            "img_nkp": np.array([i.n_kp for i in self._images], np.int64),
            "alive": self._alive,
            "offsets": main.offsets,
            "image": main.image,
            "sig": main.sig,
            "xy": main.xy,
            "scale_angle": main.scale_angle,
        }
        name = f"{vocab.version}-{self._offset}-{uuid.uuid4().hex[:8]}"
        self.store.snapshots_dir.mkdir(exist_ok=True)
        tmp = self.store.snapshots_dir / f".{name}.tmp"
        tmp.mkdir()
        try:
            for key, arr in arrays.items():
                np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, self.store.snapshots_dir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        meta = {"format": SNAPSHOT_FORMAT, "dir": name, "vocab": vocab.version, "offset": self._offset,
                "trained_on": self._trained_on, "works": len(ids), "postings": main.n}
        _atomic_write(pointer, json.dumps(meta).encode())
        self._unsnapshotted = 0
        self._remove_old_snapshots(vocab.version)
        log.info("local index: wrote a postings snapshot of %d works (%d postings)", len(ids), main.n)

    def _remove_old_snapshots(self, version: str) -> None:
        """Delete ``version``'s snapshots other than its current one, and those
        of vocabularies the journal has replaced (under ``snapshot.lock``).

        A process that mapped one keeps its pages. A vocabulary that a retrain
        elsewhere is about to announce is neither, so its snapshot stays.
        """
        try:
            current = json.loads(self.store.snapshot_pointer(version).read_text(encoding="utf-8"))["dir"]
        except (OSError, ValueError, KeyError, TypeError):
            current = None
        if not self.store.snapshots_dir.exists():
            return
        for old in self.store.snapshots_dir.iterdir():
            owner = old.name.lstrip(".").split("-")[0].split(".")[0]
            if (owner == version and old.is_dir() and old.name != current) or owner in self._stale_vocabs:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)

    def _restore_snapshot(self) -> int | None:
        """Load the current snapshot of the vocabulary in ``vocab.npz``; returns
        the journal offset it covers, or None (none, or unreadable: logged)."""
        meta: Any = None
        try:
            vocab = Vocabulary.load(self.store.vocab_path)
            meta = json.loads(self.store.snapshot_pointer(vocab.version).read_text(encoding="utf-8"))
            if meta.get("format") != SNAPSHOT_FORMAT or meta.get("vocab") != vocab.version:
                raise ValueError("it names another vocabulary or format")
            d = self.store.snapshots_dir / str(meta["dir"])
            offset = int(meta["offset"])
            if offset > self.store.journal.stat().st_size:
                raise ValueError("it covers more journal than there is")

            def arr(key: str, mmap: bool = False) -> Any:
                # Copy-on-write mapping: pages stay shared between processes
                # (nothing writes to a segment's arrays).
                a = np.load(d / f"{key}.npy", mmap_mode="c" if mmap else None, allow_pickle=False)
                return np.asarray(a)  # a plain ndarray (a view of the mapping when mapped)

            works, kinds = arr("works"), arr("kinds")
            pdq, pdq_counts = arr("pdq"), arr("pdq_counts")
            img_work, img_owner = arr("img_work"), arr("img_owner")
            img_mirrored, img_nkp, alive = arr("img_mirrored"), arr("img_nkp"), arr("alive")
            seg = _Segment(arr("offsets", True), arr("image", True), arr("sig", True), arr("xy", True),
                           arr("scale_angle", True))
            if seg.offsets.shape[0] != vocab.size + 1 or not (
                    img_work.shape[0] == img_owner.shape[0] == img_mirrored.shape[0] == img_nkp.shape[0]
                    == alive.shape[0]) or pdq_counts.shape[0] != works.shape[0]:
                raise ValueError("inconsistent array shapes")
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged cache only costs a full read
            log.warning("local index: ignoring an unreadable postings snapshot: %s", exc)
            if isinstance(meta, dict):
                self._damaged_snapshot = str(meta.get("dir"))
            return None
        self._reset(vocab)
        self._trained_on = int(meta.get("trained_on", self._trained_on))
        starts = np.concatenate([[0], np.cumsum(pdq_counts)])
        for i, (wid, owner, width, height) in enumerate(works.tolist()):
            empty = LocalFeatures.empty(width, height)
            self._works[wid] = StoredWork(wid, owner, str(kinds[i]), width, height, empty, empty,
                                          pdq[starts[i]:starts[i + 1]])
        for i, (wid, owner, mirrored, n_kp) in enumerate(zip(
                img_work.tolist(), img_owner.tolist(), img_mirrored.tolist(), img_nkp.tolist(), strict=True)):
            self._images.append(_ImageInfo(wid, owner, bool(mirrored), n_kp))
            if alive[i]:
                self._image_of[(wid, bool(mirrored))] = i
        self._alive = alive.astype(bool)
        self._owner = img_owner.astype(np.int32)
        self._nkp = img_nkp.astype(np.int64)
        self._main = seg
        self._unsnapshotted = 0
        log.info("local index: restored %d works (%d postings) from a snapshot", works.shape[0], seg.n)
        return offset

    def thumbs(self, work_id: int) -> U8:
        """A searchable work's thumbnails, read from disk on first use (bounded cache)."""
        found = self._thumbs.pop(work_id, None)
        if found is None:
            found = self.store.read_thumbs(work_id)
            if len(self._thumbs) >= THUMB_CACHE:
                self._thumbs.pop(next(iter(self._thumbs)))
        self._thumbs[work_id] = found  # most recently used last
        return found

    def _drop(self, work_id: int) -> None:
        self._thumbs.pop(work_id, None)
        if self._works.pop(work_id, None) is None:
            return
        self.generation += 1
        for m in (False, True):
            img = self._image_of.pop((work_id, m), None)
            if img is not None:
                self._alive[img] = False

    def _insert(self, w: StoredWork) -> None:
        # Descriptors stay on disk (for retraining); memory keeps postings only.
        self._works[w.work_id] = replace(
            w, direct=LocalFeatures.empty(w.width, w.height),
            mirrored=LocalFeatures.empty(w.width, w.height), thumbs=np.zeros((0, 0, 0), np.uint8))
        self.generation += 1
        if self.vocab is None:
            return
        for mirrored, f in ((False, w.direct), (True, w.mirrored)):
            img = len(self._images)
            self._images.append(_ImageInfo(w.work_id, w.owner_id, mirrored, len(f)))
            self._image_of[(w.work_id, mirrored)] = img
            self._alive = np.append(self._alive, True)
            self._owner = np.append(self._owner, np.int32(w.owner_id))
            self._nkp = np.append(self._nkp, np.int64(len(f)))
            if not len(f):
                continue
            rows, sig, words = self.vocab.assign(f.desc)
            sa = np.stack([f.scale, f.angle], axis=1).astype(np.float16)
            self._pending.append(_Quantised(words, sig, np.full(rows.shape[0], img, np.int32),
                                            f.xy[rows], sa[rows]))

    def _compact(self, *, merge: bool = False) -> None:
        """Move pending postings into the delta segment, or everything into a
        new main segment when the delta has grown (or ``merge``)."""
        if self.vocab is None or not (self._pending or (merge and self._delta_parts)):
            return
        self._delta_parts.extend(self._pending)
        self._pending.clear()
        main_n = self._main.n if self._main is not None else 0
        delta_n = sum(p.words.shape[0] for p in self._delta_parts)
        parts = list(self._delta_parts)
        if merge or delta_n * 4 > main_n:
            # Merge everything into a new main segment (drops dead postings).
            if self._main is not None:
                m = self._main
                words = np.repeat(np.arange(m.offsets.shape[0] - 1, dtype=np.int32), np.diff(m.offsets))
                parts.insert(0, _Quantised(words, m.sig, m.image, m.xy, m.scale_angle))
            self._delta_parts.clear()
            self._delta = None
            self._main = self._build(parts, drop_dead=True)
        else:
            self._delta = self._build(parts, drop_dead=False)

    def _pending_to_main(self) -> None:
        """Every posting in the main segment (an empty one when there are none)."""
        assert self.vocab is not None
        self._compact(merge=True)
        if self._main is None:
            empty = _Quantised(np.zeros(0, np.int32), np.zeros(0, np.uint64), np.zeros(0, np.int32),
                               np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float16))
            self._main = self._build([empty], drop_dead=False)

    def _build(self, parts: list[_Quantised], *, drop_dead: bool) -> _Segment:
        assert self.vocab is not None
        words = np.concatenate([p.words for p in parts])
        image = np.concatenate([p.image for p in parts])
        sig = np.concatenate([p.sig for p in parts])
        xy = np.concatenate([p.xy for p in parts])
        sa = np.concatenate([p.scale_angle for p in parts])
        if drop_dead and self._alive.shape[0]:
            keep = self._alive[image]
            words, image, sig, xy, sa = words[keep], image[keep], sig[keep], xy[keep], sa[keep]
        return _Segment.build(self.vocab.size, words, image, sig, xy, sa)

    @property
    def work_ids(self) -> list[int]:
        return sorted(self._works)

    def work(self, work_id: int) -> StoredWork | None:
        return self._works.get(work_id)

    def search(
        self, q: LocalFeatures, *, top: int = 24, owner_ids: Sequence[int] | None = None,
    ) -> list[Correspondences]:
        """Best-voted (work, mirror) images with their tentative correspondences."""
        self.refresh()
        if self.vocab is None or not len(q):
            return []
        self._compact()
        rows, qsig, words = self.vocab.assign(q.desc, n_coarse=self.n_coarse, n_fine=self.n_fine,
                                              n_sub=self.n_sub)
        # Each query keypoint's entries (one per assigned word) side by side, so
        # its hits come out contiguous.
        by_row = np.argsort(rows, kind="stable")
        rows, qsig, words = rows[by_row], qsig[by_row], words[by_row]
        alive = self._alive
        if owner_ids is not None:
            alive = alive & np.isin(self._owner, np.asarray(list(owner_ids), np.int32))
        parts_q: list[I32] = []
        parts_h: list[npt.NDArray[np.uint8]] = []
        parts_i: list[I32] = []
        parts_s: list[npt.NDArray[np.int64]] = []
        parts_l: list[npt.NDArray[np.int64]] = []
        segs = [s for s in (self._main, self._delta) if s is not None]
        for si, seg in enumerate(segs):
            at, pos, ham, image = hamming_hits(seg.offsets, seg.sig, words, qsig, rows, HE_RADIUS,
                                               HITS_PER_KEYPOINT, seg.image, alive)
            # One correspondence per (image, query keypoint): the closest
            # signature, kept only when it is distinctive. A query keypoint that
            # matches several places of the same work about equally well (arcs
            # of circles, repeated strokes) is ambiguous: its second-best
            # posting at another location must be AMBIGUITY_MARGIN bits farther.
            # (A work's postings all live in one segment.)
            sel = distinct_best(rows[at], image, ham, pos, seg.xy, SAME_PLACE_PX, AMBIGUITY_MARGIN)
            parts_q.append(rows[at[sel]])
            parts_h.append(ham[sel])
            parts_i.append(image[sel])
            parts_s.append(np.full(sel.shape[0], si, np.int64))
            parts_l.append(pos[sel])
        if not parts_q:
            return []
        qi, hh, image = np.concatenate(parts_q), np.concatenate(parts_h), np.concatenate(parts_i)
        seg_of, local = np.concatenate(parts_s), np.concatenate(parts_l)
        if qi.shape[0] == 0:
            return []
        # Gaussian-weighted votes, normalised by the image's keypoint count.
        weight = np.exp(-((hh.astype(np.float32) / 16.0) ** 2))
        n_img = len(self._images)
        votes = np.bincount(image, weights=weight, minlength=n_img)
        nkp = np.maximum(self._nkp, 1).astype(np.float64)
        rank = votes / np.sqrt(nkp / 1000.0 + 1.0)
        cand = np.argsort(-rank)[:top]
        cand = cand[votes[cand] > 0]
        # The hits of the candidate images, grouped by image (original order
        # within), with their work-side geometry, in one pass.
        keep = np.flatnonzero(np.isin(image, cand))
        keep = keep[np.argsort(image[keep], kind="stable")]
        k_img, k_seg, k_loc = image[keep], seg_of[keep], local[keep]
        w_xy = np.empty((keep.shape[0], 2), np.float32)
        w_sa = np.empty((keep.shape[0], 2), np.float32)
        for si, seg in enumerate(segs):
            m = k_seg == si
            w_xy[m] = seg.xy[k_loc[m]]
            w_sa[m] = seg.scale_angle[k_loc[m]]
        qk = qi[keep]
        q_xy = q.xy[qk]
        k_ham = hh[keep].astype(np.int32)
        d_angle = np.mod(q.angle[qk] - w_sa[:, 1], 360.0).astype(np.float32)
        d_log = np.log2(np.maximum(q.scale[qk], 1e-3) / np.maximum(w_sa[:, 0], 1e-3)).astype(np.float32)
        lows = np.searchsorted(k_img, cand, side="left")
        highs = np.searchsorted(k_img, cand, side="right")
        out: list[Correspondences] = []
        for c, lo, hi in zip(cand.tolist(), lows.tolist(), highs.tolist(), strict=True):
            info = self._images[c]
            out.append(Correspondences(info.work_id, info.mirrored, float(votes[c]), q_xy[lo:hi], w_xy[lo:hi],
                                       k_ham[lo:hi], d_angle[lo:hi], d_log[lo:hi]))
        return out
