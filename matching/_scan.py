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

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg.cython_blas  # noqa: F401  # the BLAS behind np.dot in compiled code; loaded now, so
from numba import njit  # limit_native_threads finds it among the process's libraries

__all__ = [
    "curve_support", "distinct_best", "group_kmeans", "hamming_hits", "hashes_within", "nearest", "nearest_by_cell",
    "rotation_scale_peak",
]

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
def _hits(offsets, runs, blocks, sig, words, qsig, rows, radius, per_row, image_lo, alive, cap):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # Writes at most ``cap`` hits and reports the most it needed at any time: the
    # caller retries with that size when they did not fit (growing the output
    # inside the loop costs far more than a second pass). When a row's hits are
    # complete and exceed ``per_row``, they are cut in place to the closest.
    #
    # A word's postings are compared 64 at a time into a bit mask without a
    # branch, then the mask's set bits are visited: in a large registry many
    # postings lie within the radius, too many for a branch per posting to
    # predict well (docs/benchmarks.md, "The candidate search and the PDQ
    # lookup made cheaper at scale").
    #
    # A posting keeps its image's low 16 bits; the high bits are the index of the
    # run (``runs``, ``blocks`` of them a word) that holds it.
    out_i = np.empty(cap, np.int64)
    out_p = np.empty(cap, np.int64)
    out_h = np.empty(cap, np.uint8)
    out_m = np.empty(cap, np.int32)
    hist = np.zeros(65, np.int64)
    one = np.uint64(1)
    r = np.int64(radius)
    k = 0
    need = 0
    row_start = 0
    n = words.shape[0]
    for i in range(n):
        s = qsig[i]
        p0 = offsets[words[i]]
        end = offsets[words[i] + 1]
        run = words[i] * blocks
        high = np.int64(0)
        while p0 < end:
            mask = np.uint64(0)
            for j in range(min(64, end - p0)):
                mask |= np.uint64(r - np.int64(_popcount(sig[p0 + j] ^ s)) >= 0) << np.uint64(j)
            while mask:
                p = p0 + np.int64(_popcount((mask & (~mask + one)) - one))  # the lowest set bit
                mask &= mask - one
                while p >= runs[run + 1]:
                    run += 1
                    high += np.int64(1 << 16)
                m = high | np.int64(image_lo[p])
                if alive[m]:
                    h = _popcount(sig[p] ^ s)
                    if k < cap:
                        out_i[k] = i
                        out_p[k] = p
                        out_h[k] = h
                        out_m[k] = m
                    hist[h] += 1
                    k += 1
            p0 += 64
        if i + 1 < n and rows[i + 1] == rows[i]:
            continue
        need = max(need, k)
        if per_row > 0 and k - row_start > per_row and k <= cap:
            cut = 0
            total = 0
            while total + hist[cut] < per_row:
                total += hist[cut]
                cut += 1
            w = row_start
            for t in range(row_start, k):
                if out_h[t] <= cut:
                    out_i[w] = out_i[t]
                    out_p[w] = out_p[t]
                    out_h[w] = out_h[t]
                    out_m[w] = out_m[t]
                    w += 1
            k = w
        hist[:] = 0
        row_start = k
    return out_i, out_p, out_h, out_m, k, need


def hamming_hits(
    offsets: npt.NDArray[np.int64], runs: npt.NDArray[np.int64], sig: npt.NDArray[np.uint64],
    words: npt.NDArray[np.int32], qsig: npt.NDArray[np.uint64], rows: npt.NDArray[np.int32], radius: int,
    per_row: int, image_lo: npt.NDArray[np.uint16], alive: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
    """``(i, p, h, m)``: query ``i`` (index into ``words``/``qsig``) meets posting ``p``
    (index into ``sig``) of image ``m`` at Hamming distance ``h <= radius``;
    postings of images with ``alive[m]`` false are skipped.

    Word ``w``'s postings are ``offsets[w]`` up to ``offsets[w + 1]``, split into
    ``b`` runs (``b = (len(runs) - 1) // (len(offsets) - 1)``): posting ``p`` in run
    ``w * b + h`` (``runs[w * b + h] <= p < runs[w * b + h + 1]``) is of image
    ``h * 65536 + image_lo[p]``.

    ``rows`` (sorted) groups the queries by keypoint. A keypoint keeps at most about
    ``per_row`` hits (0: no limit): the closest, cut at a distance, so every hit
    as close as the farthest kept one is kept too. In a large registry most of a
    keypoint's hits are chance postings near the radius; a copy's posting is among
    the closest."""
    w = words.astype(np.int64)
    visited = int((offsets[w + 1] - offsets[w]).sum())
    cap = max(1024, visited // EXPECTED_HIT_SHARE)
    blocks = np.int64((runs.shape[0] - 1) // max(1, offsets.shape[0] - 1))
    args = (offsets, runs, blocks, sig, w, qsig, rows.astype(np.int64), np.uint64(radius), np.int64(per_row),
            image_lo, alive)
    i, p, h, m, k, need = _hits(*args, cap)
    if need > cap:
        i, p, h, m, k, need = _hits(*args, need)
    return i[:k], p[:k], h[:k], m[:k]


@njit(cache=True, nogil=True)
def _hashes_within(words, q, radius, rows, all_rows):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    n = words.shape[0] if all_rows else rows.shape[0]
    idx = np.empty(n, np.int64)
    dist = np.empty(n, np.int64)
    k = 0
    for t in range(n):
        i = t if all_rows else rows[t]
        d = np.int64(_popcount(words[i, 0] ^ q[0]) + _popcount(words[i, 1] ^ q[1])
                     + _popcount(words[i, 2] ^ q[2]) + _popcount(words[i, 3] ^ q[3]))
        if d <= radius:
            idx[k] = i
            dist[k] = d
            k += 1
    return idx[:k], dist[:k]


def hashes_within(
    words: npt.NDArray[np.uint64], q: npt.NDArray[np.uint64], radius: int, rows: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(rows, distances)`` of the 256-bit hashes (``words``, ``(n, 4)``) within
    ``radius`` bits of ``q`` (4 words), in row order; only ``rows`` (in their
    order) when given. One pass, reading each hash once: the NumPy version made
    four arrays as large as the hashes it compared."""
    sel = np.zeros(0, np.int64) if rows is None else np.asarray(rows, np.int64)
    idx, dist = _hashes_within(words, np.ascontiguousarray(q, np.uint64), np.int64(radius), sel, rows is None)
    return np.asarray(idx), np.asarray(dist)


@njit(cache=True, nogil=True)
def _distinct_best(qrow, image, ham, pos, xy, unit, same_place, margin):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    n = ham.shape[0]
    out = np.empty(n, np.int64)
    keys = np.empty(64, np.int64)
    order = np.empty(64, np.int64)
    k = 0
    start = 0
    while start < n:
        end = start + 1
        while end < n and qrow[end] == qrow[start]:
            end += 1
        m = end - start
        # Sorted by (image, distance), stably: by insertion for the few dozen hits a
        # keypoint usually keeps (HITS_PER_KEYPOINT), where a general sort's set-up
        # costs more than the sort.
        if m <= 64:
            for t in range(m):
                key = np.int64(image[start + t]) * 256 + np.int64(ham[start + t])
                u = t
                while u > 0 and keys[u - 1] > key:
                    keys[u] = keys[u - 1]
                    order[u] = order[u - 1]
                    u -= 1
                keys[u] = key
                order[u] = t
        else:
            big = np.empty(m, np.int64)
            for t in range(m):
                big[t] = np.int64(image[start + t]) * 256 + np.int64(ham[start + t])
            order = np.argsort(big, kind="mergesort")
        j = 0
        while j < m:
            a = start + order[j]
            img = image[a]
            g = j + 1
            while g < m and image[start + order[g]] == img:
                g += 1
            if g == j + 1:  # the image's only hit from this keypoint: no second to compare
                if 255 - np.int64(ham[a]) >= margin:
                    out[k] = a
                    k += 1
                j = g
                continue
            second = 255
            ax = np.float32(xy[pos[a], 0]) * unit
            ay = np.float32(xy[pos[a], 1]) * unit
            for t in range(j + 1, g):
                b = start + order[t]
                if (abs(np.float32(xy[pos[b], 0]) * unit - ax) > same_place
                        or abs(np.float32(xy[pos[b], 1]) * unit - ay) > same_place):
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
    pos: npt.NDArray[np.int64], xy: npt.NDArray[Any], same_place: float, margin: int, *, unit: float = 1.0,
) -> npt.NDArray[np.int64]:
    """Indices of the hits that are each (query keypoint, image)'s closest posting and
    distinctive: the closest posting of that image at another place (farther than
    ``same_place`` pixels in x or y) is at least ``margin`` bits farther (255 when
    there is none). Hits must be grouped by ``qrow`` (contiguous); within a group
    the first of equally close postings wins. ``xy[pos]`` times ``unit`` is in
    pixels (the postings keep fixed-point coordinates)."""
    return np.asarray(_distinct_best(qrow, image, ham, pos, xy, np.float32(unit), np.float32(same_place),
                                     np.int64(margin)))


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
def _nearest_by_cell(x, x_row, cell, cent_t, cnorm, k):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    n = x_row.shape[0]
    dim = cent_t.shape[1]
    kc = cent_t.shape[2]
    out = np.empty((n, k), np.int64)
    best_d = np.empty(k, np.float32)
    i0 = 0
    while i0 < n:
        c = cell[i0]
        i1 = i0 + 1
        while i1 < n and cell[i1] == c:
            i1 += 1
        block = np.empty((i1 - i0, dim), np.float32)
        for b in range(i1 - i0):
            block[b, :] = x[x_row[i0 + b], :]
        dots = np.dot(block, cent_t[c])  # one matrix product (BLAS) per run of equal cells
        for b in range(i1 - i0):
            i = i0 + b
            for t in range(k):
                best_d[t] = np.inf
                out[i, t] = 0
            for j in range(kc):
                dist = cnorm[c, j] - np.float32(2.0) * dots[b, j]
                if dist < best_d[k - 1]:
                    t = k - 1
                    while t > 0 and best_d[t - 1] > dist:
                        best_d[t] = best_d[t - 1]
                        out[i, t] = out[i, t - 1]
                        t -= 1
                    best_d[t] = dist
                    out[i, t] = j
        i0 = i1
    return out


def nearest_by_cell(
    x: npt.NDArray[np.float32], x_row: npt.NDArray[np.int64], cell: npt.NDArray[np.int64],
    cent_t: npt.NDArray[np.float32], cnorm: npt.NDArray[np.float32], k: int,
) -> npt.NDArray[np.int64]:
    """:func:`nearest` for pairs sorted by cell, with the centroids transposed
    (``cent_t``: ``(cells, dim, per cell)``): each run of pairs sharing a cell is
    one matrix product, about 2.5x faster than :func:`nearest` on the coarse and
    fine levels. Distances are summed in another order, so an exact tie can
    break the other way."""
    return np.asarray(_nearest_by_cell(np.ascontiguousarray(x, np.float32), x_row.astype(np.int64),
                                       cell.astype(np.int64), cent_t, cnorm, np.int64(k)))


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


@njit(cache=True, nogil=True, fastmath=True)
def _group_kmeans(x, offsets, k, iters, min_members, far):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    groups = offsets.shape[0] - 1
    dim = x.shape[1]
    cent = np.full((groups, k, dim), far, np.float32)
    for g in range(groups):
        lo = offsets[g]
        m = offsets[g + 1] - lo
        if m == 0:
            continue
        kk = min(k, m // min_members)
        if kk <= 1:
            for d in range(dim):
                acc = np.float64(0.0)
                for i in range(lo, lo + m):
                    acc += x[i, d]
                cent[g, 0, d] = np.float32(acc / m)
            continue
        for j in range(kk):  # members spread over the group (the sample is shuffled)
            src = lo + (j * m) // kk
            for d in range(dim):
                cent[g, j, d] = x[src, d]
        lab = np.full(m, -1, np.int64)
        sums = np.zeros((kk, dim), np.float64)
        cnt = np.zeros(kk, np.int64)
        for _ in range(iters):
            changed = False
            for i in range(m):
                best = np.float32(np.inf)
                bj = 0
                for j in range(kk):
                    dist = np.float32(0.0)
                    for d in range(dim):
                        diff = x[lo + i, d] - cent[g, j, d]
                        dist += diff * diff
                    if dist < best:
                        best = dist
                        bj = j
                if lab[i] != bj:
                    lab[i] = bj
                    changed = True
            if not changed:
                break
            sums[:] = 0.0
            cnt[:] = 0
            for i in range(m):
                cnt[lab[i]] += 1
                for d in range(dim):
                    sums[lab[i], d] += x[lo + i, d]
            for j in range(kk):
                if cnt[j] > 0:  # an emptied cluster keeps its centroid
                    for d in range(dim):
                        cent[g, j, d] = np.float32(sums[j, d] / cnt[j])
    return cent


def group_kmeans(
    x: npt.NDArray[np.float32], offsets: npt.NDArray[np.int64], k: int, *, iters: int = 10,
    min_members: int = 6, far: float = 1e4,
) -> npt.NDArray[np.float32]:
    """``(groups, k, dim)``: k-means (Lloyd, ``iters`` rounds at most) run separately
    on each group of rows ``x[offsets[g]:offsets[g + 1]]``. A group gets at most one
    centroid per ``min_members`` rows (its mean when that is one or none); slots it
    does not use are filled with ``far``, so no point is ever nearest to them.
    Centroids start at rows spread evenly over the group: shuffle ``x`` within groups
    first."""
    return np.asarray(_group_kmeans(np.ascontiguousarray(x, np.float32), offsets.astype(np.int64),
                                    np.int64(k), np.int64(iters), np.int64(min_members), np.float32(far)))
