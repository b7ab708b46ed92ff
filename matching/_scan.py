"""The inverted file's inner loop, compiled: postings within a Hamming radius.

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

__all__ = ["distinct_best", "hamming_hits"]

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
