"""The matching engine's inner loops, compiled: nearest words, postings within
a Hamming radius, the distinctive posting per image, the weak-consistency
histogram and the one-curve test of verification. Each replaces a NumPy
version whose per-call overhead dominated on the small arrays involved.

For each (query descriptor, word) pair, every posting of the word is compared
with the descriptor's 64-bit signature. In NumPy that loop materialises
several arrays as long as all the postings visited (millions per upload once
the registry holds thousands of works); compiled, it streams through each
word's contiguous postings once and keeps only the hits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["curve_support", "distinct_best", "hamming_hits", "nearest", "rotation_scale_peak"]

#: Output space is first sized for one hit in this many postings visited (about
#: one in 18 lie within the Hamming radius on the dev set).
EXPECTED_HIT_SHARE = 8

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@njit(cache=True, nogil=True, inline="always")
def _popcount(x):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _hits(offsets, sig, words, qsig, radius, image, alive, cap):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # Writes at most ``cap`` hits and counts them all: the caller retries with the
    # exact size when they did not fit (growing the output inside the loop costs
    # far more than a second pass).
    out_i = np.empty(cap, np.int64)
    out_p = np.empty(cap, np.int64)
    out_h = np.empty(cap, np.uint8)
    out_m = np.empty(cap, np.int32)
    k = 0
    for i in range(words.shape[0]):
        s = qsig[i]
        for p in range(offsets[words[i]], offsets[words[i] + 1]):
            h = _popcount(sig[p] ^ s)
            if h <= radius and alive[image[p]]:
                if k < cap:
                    out_i[k] = i
                    out_p[k] = p
                    out_h[k] = h
                    out_m[k] = image[p]
                k += 1
    return out_i, out_p, out_h, out_m, k


def hamming_hits(
    offsets: npt.NDArray[np.int64], sig: npt.NDArray[np.uint64], words: npt.NDArray[np.int32],
    qsig: npt.NDArray[np.uint64], radius: int, image: npt.NDArray[np.int32],
    alive: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
    """``(i, p, h, m)``: query ``i`` (index into ``words``/``qsig``) meets posting ``p``
    (index into ``sig``) of image ``m = image[p]`` at Hamming distance ``h <= radius``;
    postings of images with ``alive[m]`` false are skipped."""
    w = words.astype(np.int64)
    visited = int((offsets[w + 1] - offsets[w]).sum())
    cap = max(1024, visited // EXPECTED_HIT_SHARE)
    i, p, h, m, k = _hits(offsets, sig, w, qsig, np.uint64(radius), image, alive, cap)
    if k > cap:
        i, p, h, m, k = _hits(offsets, sig, w, qsig, np.uint64(radius), image, alive, k)
    return i[:k], p[:k], h[:k], m[:k]


@njit(cache=True, nogil=True)
def _distinct_best(qrow, image, ham, pos, xy, same_place, margin):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    n = ham.shape[0]
    out = np.empty(n, np.int64)
    k = 0
    start = 0
    while start < n:
        end = start + 1
        while end < n and qrow[end] == qrow[start]:
            end += 1
        m = end - start
        keys = np.empty(m, np.int64)
        for t in range(m):
            keys[t] = np.int64(image[start + t]) * 256 + np.int64(ham[start + t])
        order = np.argsort(keys, kind="mergesort")
        j = 0
        while j < m:
            a = start + order[j]
            img = image[a]
            g = j + 1
            while g < m and image[start + order[g]] == img:
                g += 1
            second = 255
            ax = xy[pos[a], 0]
            ay = xy[pos[a], 1]
            for t in range(j + 1, g):
                b = start + order[t]
                if abs(xy[pos[b], 0] - ax) > same_place or abs(xy[pos[b], 1] - ay) > same_place:
                    second = int(ham[b])
                    break
            if second - np.int64(ham[a]) >= margin:
                out[k] = a
                k += 1
            j = g
        start = end
    return out[:k]


def distinct_best(
    qrow: npt.NDArray[np.int32], image: npt.NDArray[np.int32], ham: npt.NDArray[np.uint8],
    pos: npt.NDArray[np.int64], xy: npt.NDArray[np.float32], same_place: float, margin: int,
) -> npt.NDArray[np.int64]:
    """Indices of the hits that are each (query keypoint, image)'s closest posting and
    distinctive: the closest posting of that image at another place (farther than
    ``same_place`` pixels in x or y) is at least ``margin`` bits farther (255 when
    there is none). Hits must be grouped by ``qrow`` (contiguous); within a group
    the first of equally close postings wins."""
    return np.asarray(_distinct_best(qrow, image, ham, pos, xy, np.float32(same_place), np.int64(margin)))


@njit(cache=True, nogil=True, fastmath=True)
def _nearest(x, x_row, cell, cent, cnorm, k):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    n = x_row.shape[0]
    kc = cent.shape[1]
    dim = x.shape[1]
    out = np.empty((n, k), np.int64)
    best_d = np.empty(k, np.float32)
    for i in range(n):
        r = x_row[i]
        c = cell[i]
        for t in range(k):
            best_d[t] = np.inf
            out[i, t] = 0
        for j in range(kc):
            dot = np.float32(0.0)
            for d in range(dim):
                dot += x[r, d] * cent[c, j, d]
            dist = cnorm[c, j] - np.float32(2.0) * dot
            if dist < best_d[k - 1]:
                t = k - 1
                while t > 0 and best_d[t - 1] > dist:
                    best_d[t] = best_d[t - 1]
                    out[i, t] = out[i, t - 1]
                    t -= 1
                best_d[t] = dist
                out[i, t] = j
    return out


def nearest(
    x: npt.NDArray[np.float32], x_row: npt.NDArray[np.int64], cell: npt.NDArray[np.int64],
    cent: npt.NDArray[np.float32], cnorm: npt.NDArray[np.float32], k: int,
) -> npt.NDArray[np.int64]:
    """``(len(x_row), k)``: for each pair ``i``, the ``k`` centroids of
    ``cent[cell[i]]`` (``(cells, per cell, dim)``; ``cnorm`` their squared
    norms) nearest to ``x[x_row[i]]`` in squared L2, nearest first (ties: the
    lower index). Pairs sorted by cell reuse each cell's centroids in cache.
    ``k`` must not exceed the centroids per cell."""
    return np.asarray(_nearest(x, x_row, cell, cent, cnorm, np.int64(k)))


@njit(cache=True, nogil=True)
def _rotation_scale_peak(d_angle, d_log, angle_bins, scale_bin):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    n = d_angle.shape[0]
    width = np.float32(360.0 / angle_bins)
    a = np.empty(n, np.int64)
    s = np.empty(n, np.int64)
    hist = np.zeros((angle_bins, 24), np.int64)
    for i in range(n):
        a[i] = np.int64(d_angle[i] / width) % angle_bins
        s[i] = min(23, max(0, np.int64(np.floor(d_log[i] / scale_bin)) + 12))
        hist[a[i], s[i]] += 1
    best = -1
    pa = 0
    ps = 0
    for i in range(angle_bins):
        for j in range(24):
            tot = 0
            for di in range(-1, 2):
                r = (i + di) % angle_bins
                for dj in range(max(0, j - 1), min(24, j + 2)):
                    tot += hist[r, dj]
            if tot > best:
                best = tot
                pa = i
                ps = j
    mask = np.zeros(n, np.bool_)
    k = 0
    half = angle_bins // 2
    for i in range(n):
        da = abs(((a[i] - pa + half) % angle_bins) - half)
        if da <= 1 and abs(s[i] - ps) <= 1:
            mask[i] = True
            k += 1
    return k, mask


def rotation_scale_peak(
    d_angle: npt.NDArray[np.float32], d_log: npt.NDArray[np.float32], angle_bins: int, scale_bin: float,
) -> tuple[int, npt.NDArray[np.bool_]]:
    """Weak geometric consistency: correspondences in the densest 3x3 window of
    the (rotation, log-scale) histogram (rotation wraps around; 24 scale bins
    centred on no change; the first of equal windows wins), and their mask.
    ``d_angle`` in degrees [0, 360), ``d_log`` in log2 units."""
    k, mask = _rotation_scale_peak(np.ascontiguousarray(d_angle, np.float32), np.ascontiguousarray(d_log, np.float32),
                                   np.int64(angle_bins), np.float32(scale_bin))
    return int(k), mask


@njit(cache=True, nogil=True)
def _curve_support(p, tol, tries):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    np.random.seed(0)  # numba's own generator: the same samples on every call
    n = p.shape[0]
    best = 0
    for _ in range(tries):
        i = np.random.randint(0, n)
        j = np.random.randint(0, n - 1)
        if j >= i:
            j += 1
        k = np.random.randint(0, n - 2)
        lo, hi = min(i, j), max(i, j)
        if k >= lo:
            k += 1
        if k >= hi:
            k += 1
        ax, ay, bx, by, cx, cy = p[i, 0], p[i, 1], p[j, 0], p[j, 1], p[k, 0], p[k, 1]
        dx, dy = bx - ax, by - ay
        nd = np.hypot(dx, dy)
        if nd > 1e-6:
            cnt = 0
            for t in range(n):
                if abs(dx * (p[t, 1] - ay) - dy * (p[t, 0] - ax)) / nd < tol:
                    cnt += 1
            best = max(best, cnt)
        den = 2.0 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
        if abs(den) < 1e-9:
            continue
        sa, sb, sc = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
        ux = (sa * (by - cy) + sb * (cy - ay) + sc * (ay - by)) / den
        uy = (sa * (cx - bx) + sb * (ax - cx) + sc * (bx - ax)) / den
        r = np.hypot(ax - ux, ay - uy)
        cnt = 0
        for t in range(n):
            if abs(np.hypot(p[t, 0] - ux, p[t, 1] - uy) - r) < tol:
                cnt += 1
        best = max(best, cnt)
    return best


def curve_support(pts: npt.NDArray[np.float32], tol: float, tries: int = 40) -> int:
    """Most of ``pts`` lying within ``tol`` of one line or one circle, over
    ``tries`` lines and circles through random triples of them (the same
    triples for the same number of points: the sampling is seeded). Needs at
    least three points."""
    return int(_curve_support(np.ascontiguousarray(pts, np.float64), np.float64(tol), np.int64(tries)))
