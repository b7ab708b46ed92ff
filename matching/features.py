"""Local features: RootSIFT keypoints of uploads and of registered works.

Registered works are described by RootSIFT keypoints extracted from several
renderings of the work (both mirror states, two scales, and for logos with
alpha both white and black backgrounds), so a copy that is flipped, shrunk or
pasted onto a dark photo still shares keypoints with one rendering. Retrieval
over them is :mod:`matching.postings` (with :mod:`matching.vocabulary`); their
persistence is :mod:`registry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "LocalFeatures",
    "StoredWork",
    "extract_features",
    "extract_work_features",
    "limit_native_threads",
]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

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
_ROOT_SCALE = 512.0


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

