"""Dense check of a verified alignment: do the work's edges appear where the fit puts them?

Keypoint verification counts a handful of corresponding points; a chance fit
of 6 or 7 points is not rare among thousands of (upload, work) pairs, while a
true copy of a flat logo may offer no more than that. Once a transform is
fitted, the whole work can be compared instead: the upload is warped back
into the frame of a small thumbnail of the work, and the two gradient fields
are correlated over the part of the work the upload shows.

Each gradient is taken as a doubled-angle vector (``m cos 2t, m sin 2t``):
it keeps where an edge is and which way it runs, and drops its polarity. So
brightness, contrast, colour, grey conversion, inversion and, for logos, the
background they were pasted on do not matter (the thumbnail's edges are
taken on both a white and a black background, so a transparent logo's
outline counts whatever lies behind it). A true copy correlates at 0.85-0.95
(text, emoji or blur lower it, never to chance); a chance fit leaves the
edges in unrelated places and correlates near zero.

Many logos share an outline (a circle badge, a rounded square), and a fit of
the outline alone correlates well. For a transparent logo the edges inside
its silhouette are therefore correlated on their own as well, and the lower
of the two values is the answer. A logo whose inside is flat (a plain disc,
a bar) has nothing there to correlate; instead the upload must be flat there
too: edges inside the outline beyond what the logo itself has there mean
something else fills that outline, and the excess is taken off.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["THUMB_SIDE", "dense_agreement", "work_thumbnails"]

U8 = npt.NDArray[np.uint8]
#: OpenCV hands back loosely typed arrays.
Arr = npt.NDArray[Any]

#: Long side of the stored work thumbnails (pixels).
THUMB_SIDE = 128
#: Least share of the thumbnail the upload must show for the check to say anything.
MIN_VISIBLE = 0.15
#: Share of a transparent logo's edge strength that must lie inside its outline
#: for the interior to be checked on its own.
INTERIOR_SHARE = 0.1
#: For a flat-inside logo: share of the upload's edge strength inside the
#: outline, beyond the logo's own share, tolerated before it counts against
#: the agreement (text, emoji and fabric texture over a true copy stay below).
CLUTTER_TOLERANCE = 0.15


def work_thumbnails(renderings: list[npt.NDArray[np.uint8]]) -> U8:
    """Grey thumbnails of a work's renderings, ``(k, h, w)`` uint8, long side :data:`THUMB_SIDE`."""
    h, w = renderings[0].shape[:2]
    s = min(1.0, THUMB_SIDE / float(max(h, w)))
    size = (max(8, round(w * s)), max(8, round(h * s)))
    out = []
    for rgb in renderings:
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        out.append(cv2.resize(gray, size, interpolation=cv2.INTER_AREA))
    return np.stack(out).astype(np.uint8)


def _orientation_field(gray: Arr, sigma: float) -> tuple[Arr, Arr, Arr]:
    """Gradient as a doubled-angle vector (polarity-free): ``(m cos 2t, m sin 2t, m)``."""
    g = cv2.GaussianBlur(gray, (0, 0), sigma) if sigma > 0.3 else gray
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    m = np.asarray(cv2.magnitude(gx, gy), np.float32)
    inv = 1.0 / np.maximum(m, 1e-6)
    return (gx * gx - gy * gy) * inv, 2.0 * gx * gy * inv, m


def dense_agreement(
    thumbs: U8, work_size: tuple[int, int], mirrored: bool, homography: npt.NDArray[np.float64],
    upload_gray: U8,
) -> float | None:
    """Correlation (-1..1) of the work's and the aligned upload's edge strength.

    ``homography`` maps the work frame (``work_size`` = (width, height), the
    mirrored frame when ``mirrored``) to ``upload_gray``'s pixels. Returns
    None when the upload shows too little of the work to tell.
    """
    if thumbs.size == 0:
        return None
    th, tw = thumbs.shape[1:]
    ww, wh = work_size
    to_frame = np.diag([ww / float(tw), wh / float(th), 1.0])
    m = homography @ to_frame  # thumbnail pixels -> upload pixels
    if not np.all(np.isfinite(m)) or abs(m[2, 2]) < 1e-12:
        return None
    lin = m[:2, :2] / m[2, 2]
    k = float(np.sqrt(abs(np.linalg.det(lin))))  # upload pixels per thumbnail pixel
    if not np.isfinite(k) or k <= 0:
        return None
    up: Arr = upload_gray.astype(np.float32)
    if k > 1.5:  # anti-alias before sampling the upload more coarsely
        up = cv2.GaussianBlur(up, (0, 0), 0.45 * k)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped: Arr = cv2.warpPerspective(up, m, (tw, th), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    covered: Arr = cv2.warpPerspective(np.full(upload_gray.shape, 255, np.uint8), m, (tw, th),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    inside: Arr = cv2.erode(covered, np.ones((5, 5), np.uint8)) > 0
    if inside.mean() < MIN_VISIBLE:
        return None
    # Compare at the coarser of the two resolutions.
    sigma = max(1.0, 0.7 / k)
    wc: Arr | None = None
    ws: Arr | None = None
    wm: Arr | None = None
    for thumb in thumbs:
        t = thumb[:, ::-1] if mirrored else thumb
        c, s_, m = _orientation_field(np.ascontiguousarray(t).astype(np.float32), sigma)
        if wm is None:
            wc, ws, wm = c, s_, m
        else:  # per pixel, the rendering with the stronger edge (a logo's outline on white or black)
            take = m > wm
            assert wc is not None and ws is not None
            wc, ws, wm = np.where(take, c, wc), np.where(take, s_, ws), np.maximum(m, wm)
    assert wc is not None and ws is not None and wm is not None
    uc, us, um = _orientation_field(warped, 1.0)
    agreement = _correlation((wc, ws), (uc, us), inside)
    if thumbs.shape[0] > 1:
        # A transparent logo: its outline (a circle, a rounded square) is shared
        # by many other logos. The edges inside the outline must agree as well.
        t0, t1 = (thumbs[:, :, ::-1] if mirrored else thumbs)[:2]
        shape = _silhouette((255 - cv2.absdiff(t0, t1)) > 128)
        band = cv2.morphologyEx(shape, cv2.MORPH_GRADIENT, np.ones((7, 7), np.uint8)) > 0
        interior: Arr = inside & (shape > 0) & ~band
        work_share = float(wm[interior].sum()) / max(float(wm[inside].sum()), 1e-9)
        if work_share >= INTERIOR_SHARE:
            agreement = min(agreement, _correlation((wc, ws), (uc, us), interior))
        else:
            upload_share = float(um[interior].sum()) / max(float(um[inside].sum()), 1e-9)
            agreement -= max(0.0, upload_share - work_share - CLUTTER_TOLERANCE)
    return agreement


def _silhouette(opaque: npt.NDArray[np.bool_]) -> U8:
    """The opaque mask with its holes filled (cut-out letters belong to the inside)."""
    h, w = opaque.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = opaque.astype(np.uint8)
    cv2.floodFill(flood, None, (0, 0), 2)
    return np.asarray(flood[1:-1, 1:-1] != 2, np.uint8)


def _correlation(w: tuple[Arr, Arr], u: tuple[Arr, Arr], where: Arr) -> float:
    a = np.stack([w[0][where], w[1][where]]).astype(np.float64)
    b = np.stack([u[0][where], u[1][where]]).astype(np.float64)
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den <= 1e-9:
        return 0.0
    return float((a * b).sum() / den)
