"""Geometric verification of tentative correspondences.

A copy of a work, however cropped, recoloured or pasted, maps the work's
plane into the upload by a similarity (most edits) or a homography (tilted
or photographed copies). Verification fits a similarity first (two-point
samples find it among few inliers), then refines it to a homography on the
correspondences it explains, and reports the evidence the score is built
from: distinct inliers, their share of the tentative matches, how much of
the work they cover, and whether the fitted shape is plausible. The polygon
is the work's outline mapped into the upload.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from matching._scan import curve_support

__all__ = ["Verification", "verify"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Verification:
    """Evidence that the work's plane appears in the upload."""

    inliers: int  # distinct inlier positions
    tentative: int  # tentative correspondences offered
    coverage: float  # inliers' hull area / work area (work frame)
    upload_share: float  # projected work area / upload area (clipped to 1)
    scale: float  # linear scale work -> upload
    distortion: float  # singular-value ratio of the local linear map (1 = similarity)
    polygon: list[list[float]]  # work outline in upload pixels
    plausible: bool
    #: The fitted work -> upload transform (3x3).
    homography: npt.NDArray[np.float64] | None = None
    #: The similarity this homography refined, as its own evidence (None when
    #: this is the similarity): the other candidate alignment.
    alternative: Verification | None = None

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / max(1, self.tentative)


def _distinct(pts: F32, grid: float) -> int:
    if pts.shape[0] == 0:
        return 0
    cells = np.round(pts / grid).astype(np.int64)
    return int(np.unique(cells[:, 0] * 100_003 + cells[:, 1]).shape[0])


def _hull_area(pts: F32) -> float:
    if pts.shape[0] < 3:
        return 0.0
    hull = cv2.convexHull(pts.reshape(-1, 1, 2).astype(np.float32))
    return float(cv2.contourArea(hull))


def _on_one_curve(pts: F32, tol: float) -> int:
    """Most points lying on one circle or one line (within ``tol``).

    Points on a single circle or line do not fix the transform: any circle
    maps onto any other circle under a similarity of arbitrary rotation, so
    arcs of round logos "verify" against each other. Such inliers count as
    a few, not as many.
    """
    if pts.shape[0] < 5:
        return 0
    return curve_support(pts, tol, tries=40)


def _polygon_ok(poly: npt.NDArray[Any]) -> bool:
    if not np.all(np.isfinite(poly)):
        return False
    return bool(cv2.isContourConvex(poly.reshape(-1, 1, 2).astype(np.float32)))


def verify(
    w_xy: F32, q_xy: F32, *, work_size: tuple[int, int], upload_size: tuple[int, int],
    offered: int | None = None,
) -> Verification | None:
    """Fit the work -> upload transform; ``None`` when there is nothing to fit.

    ``work_size`` and ``upload_size`` are ``(width, height)`` of the frames
    ``w_xy`` and ``q_xy`` live in; ``offered`` is the number of tentative
    correspondences before any pre-filtering (for the inlier ratio).
    """
    n = int(w_xy.shape[0])
    if n < 3:
        return None
    uw, uh = upload_size
    ww, wh = work_size
    thr = float(max(3.0, 0.011 * np.sqrt(uw * uh)))
    src = w_xy.reshape(-1, 1, 2).astype(np.float32)
    dst = q_xy.reshape(-1, 1, 2).astype(np.float32)
    A, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=thr,
                                          maxIters=400, confidence=0.99, refineIters=5)
    if A is None or mask is None:
        return None
    inl = mask.ravel().astype(bool)
    similar = _evidence(w_xy, q_xy, inl, np.vstack([A, [0.0, 0.0, 1.0]]), work_size, upload_size, thr,
                        offered or n)
    if int(inl.sum()) >= 8:
        # Refine to a homography on what the similarity roughly explains.
        proj = cv2.transform(src, A).reshape(-1, 2)
        err = np.linalg.norm(proj - q_xy, axis=1)
        near = err < 3.0 * thr
        if int(near.sum()) >= 8:
            Hh, mh = cv2.findHomography(src[near], dst[near], cv2.RANSAC, thr, maxIters=500,
                                        confidence=0.995)
            if Hh is not None and mh is not None:
                cand = np.zeros(n, bool)
                cand[np.flatnonzero(near)[mh.ravel().astype(bool)]] = True
                if cand.sum() >= inl.sum() and _homography_sane(Hh, ww, wh):
                    warped = _evidence(w_xy, q_xy, cand, Hh, work_size, upload_size, thr, offered or n)
                    # A homography from a few points can fit them and still be wrong:
                    # the engine keeps whichever alignment its dense check agrees with more.
                    return replace(warped, alternative=similar)
    return similar


def _evidence(w_xy: F32, q_xy: F32, inl: npt.NDArray[np.bool_], H: npt.NDArray[np.float64],
              work_size: tuple[int, int], upload_size: tuple[int, int], thr: float, offered: int) -> Verification:
    """The evidence of one fitted alignment ``H`` with inliers ``inl``."""
    uw, uh = upload_size
    ww, wh = work_size
    w_in = w_xy[inl]
    q_in = q_xy[inl]
    grid = max(2.0, thr * 0.5)
    distinct = min(_distinct(q_in, grid), _distinct(w_in, grid * max(1.0, ww / max(uw, 1))))
    tol = max(2.0, 0.012 * float(np.hypot(ww, wh)))
    curve = _on_one_curve(w_in, tol)
    if curve > 4:
        distinct = max(0, distinct - (curve - 4))
    corners = np.array([[0, 0], [ww, 0], [ww, wh], [0, wh]], np.float32).reshape(-1, 1, 2)
    poly = cv2.perspectiveTransform(corners, H).reshape(-1, 2)
    lin = H[:2, :2] / max(abs(H[2, 2]), 1e-9)
    sv = np.linalg.svd(lin, compute_uv=False)
    scale = float(np.sqrt(max(sv[0] * sv[1], 0.0)))
    distortion = float(sv[0] / max(sv[1], 1e-9))
    proj_area = abs(float(cv2.contourArea(poly.reshape(-1, 1, 2).astype(np.float32))))
    upload_share = min(1.0, proj_area / float(uw * uh))
    coverage = min(1.0, _hull_area(w_in) / float(ww * wh))
    plausible = (
        _polygon_ok(poly)
        and distortion < 3.0
        and proj_area >= 0.002 * uw * uh
        and proj_area >= 20.0 * 20.0
        and scale > 0.0
    )
    return Verification(distinct, offered, coverage, upload_share, scale, distortion,
                        [[float(x), float(y)] for x, y in poly], plausible, np.asarray(H, np.float64))


def _homography_sane(H: npt.NDArray[np.float64], w: int, h: int) -> bool:
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32).reshape(-1, 1, 2)
    poly = cv2.perspectiveTransform(corners, H).reshape(-1, 2)
    if not _polygon_ok(poly):
        return False
    # Opposite sides may not differ too much (a strongly perspective-warped
    # outline is far more often a degenerate fit than a real photo).
    sides = np.linalg.norm(np.roll(poly, -1, axis=0) - poly, axis=1)
    return bool(sides.min() > 1.0 and max(sides[0] / sides[2], sides[2] / sides[0]) < 2.5
                and max(sides[1] / sides[3], sides[3] / sides[1]) < 2.5)
