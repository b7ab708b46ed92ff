"""The visual vocabulary local features are quantised with.

Descriptors are quantised with a two-level k-means vocabulary trained on the
registry itself (like an IVF index) and refined with a 64-bit
Hamming-embedding signature of the residual. Once the registry averages more
than :data:`POSTINGS_PER_WORD` postings per word, its next retrain adds a third
level (up to :data:`MAX_SUB_WORDS` sub-words per word), so the postings a query
visits stay bounded as the registry grows. A vocabulary travels as npz bytes
(:meth:`Vocabulary.to_bytes`, :meth:`Vocabulary.from_bytes`); where they are
kept is :mod:`registry`.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, replace
from functools import cached_property

import cv2
import numpy as np
import numpy.typing as npt

from matching._scan import group_kmeans, nearest, nearest_by_cell

__all__ = ["HE_BITS", "MAX_SUB_WORDS", "POSTINGS_PER_WORD", "Vocabulary"]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]

HE_BITS = 64
#: A word whose postings would average more than this is split into sub-words
#: (the vocabulary's third level, :meth:`Vocabulary.with_sublevel`): the postings
#: a query visits then stop growing with the registry.
POSTINGS_PER_WORD = 256
MAX_SUB_WORDS = 8
#: Sub-words are trained on about this many sampled rows at a time.
SUB_TRAIN_ROWS = 1 << 20


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
        del word
        # Word by word, so float32 rows are made for a run of words at a time:
        # the whole sample as float32 (20 million rows at 100,000 works) would
        # be 10 GB. Each word's k-means sees only its own rows, so this gives
        # the same centroids as one call over the whole sample.
        sub = np.empty((plain.size, k3, desc.shape[1]), np.float32)
        g = 0
        while g < plain.size:
            end = int(np.searchsorted(offsets, offsets[g] + SUB_TRAIN_ROWS, side="right")) - 1
            end = min(plain.size, max(end, g + 1))
            lo, hi = int(offsets[g]), int(offsets[end])
            sub[g:end] = group_kmeans(desc[order[lo:hi]].astype(np.float32), offsets[g : end + 1] - lo, k3)
            g = end
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

    def to_bytes(self) -> bytes:
        """The vocabulary as npz bytes (what ``vocab.npz`` holds)."""
        buf = io.BytesIO()
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "coarse": self.coarse, "fine": self.fine, "proj": self.proj, "version": np.array(self.version)}
        if self.sub is not None:
            arrays["sub"] = self.sub
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Vocabulary:
        with np.load(io.BytesIO(data)) as z:
            sub = z["sub"] if "sub" in z.files else None
            return Vocabulary(z["coarse"], z["fine"], z["proj"], str(z["version"]), sub)

