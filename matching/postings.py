"""The in-memory postings index over registered works' local features.

An upload's descriptors look up their words (:mod:`matching.vocabulary`),
keep postings within a Hamming radius (at most about
:data:`HITS_PER_KEYPOINT` of the closest per keypoint), and vote for
(work, mirror) *images*. The surviving correspondences of the best-voted
images go straight to geometric verification (:mod:`matching.verify`), so no
work's descriptors are read at query time.

Postings live in a main segment (CSR by word), a delta segment and a list of
pending parts. A posting is 16 bytes: its 64-bit signature, the low 16 bits of
its image number (a word's postings ascend by image, and the segment keeps where
each run of equal high bits starts: :attr:`_Segment.runs`), its work-frame
position in fixed point (two uint16 of :data:`XY_UNIT` pixels: works are
described at most :data:`~matching.engine.WORK_MAX_SIDE` = 1024 pixels wide, so
a position is off by at most 1/64 pixel) and its keypoint size and orientation,
one byte each (:func:`sa_codes`: 1/16 of an octave and 360/256 degrees, far finer
than the weak-consistency histogram's cells of half an octave and 20 degrees);
:meth:`PostingsIndex.export_state` and
:meth:`PostingsIndex.import_state` turn that state into a dict of numpy arrays
and back (what a snapshot holds). Nothing here touches files, locks or a
change feed: that is :mod:`registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from matching._scan import distinct_best, hamming_hits, rotation_scale_peak
from matching.features import LocalFeatures, StoredWork
from matching.vocabulary import Vocabulary

__all__ = ["AMBIGUITY_MARGIN", "HE_RADIUS", "HITS_PER_KEYPOINT", "SAME_PLACE_PX", "XY_UNIT", "Correspondences",
           "PostingsIndex", "QuantisedWork", "from_format2", "sa_codes", "sa_values"]

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: Postings farther than this (of 64 bits) from the query signature are ignored.
HE_RADIUS = 22
#: A query keypoint keeps about this many of its closest postings (per segment).
#: Only busy words in a large registry reach it: there, most postings within the
#: radius are chance ones.
HITS_PER_KEYPOINT = 64
#: Postings of one work closer than this (work pixels) are the same place
#: (the work is described at several scales and on two backgrounds).
SAME_PLACE_PX = 6.0
AMBIGUITY_MARGIN = 3
#: Pixels per unit of a posting's stored position (a power of two, so the
#: conversion to float32 is exact). 65,535 units cover 2,048 pixels.
XY_UNIT = 1.0 / 32.0


#: A keypoint size is kept as ``rint(log2(size) / SCALE_STEP) - SCALE_MIN`` (clipped
#: to a byte): 1/16 of an octave a step, sizes from 1/16 to about 3,900 pixels.
SCALE_STEP = 1.0 / 16.0
SCALE_MIN = -64
#: A keypoint orientation is kept in steps of 360/256 degrees.
ANGLE_STEP = 360.0 / 256.0
#: Image numbers are kept as their low 16 bits; the high bits come from the run.
IMAGE_LO_BITS = 16


def sa_codes(scale_angle: npt.NDArray[np.float16]) -> U8:
    """``(n, 2)`` bytes for keypoint (size, orientation) pairs, as a posting keeps them.

    Computed from the float16 pair (what a posting held before), so a snapshot of
    that format converts to exactly what quantising the works again gives."""
    sa = scale_angle.astype(np.float32)
    out = np.empty(sa.shape, np.uint8)
    log_size = np.log2(np.maximum(sa[:, 0], np.float32(2.0 ** (SCALE_MIN * SCALE_STEP))))
    out[:, 0] = np.clip(np.rint(log_size / np.float32(SCALE_STEP)) - SCALE_MIN, 0, 255).astype(np.uint8)
    out[:, 1] = (np.rint(sa[:, 1] / np.float32(ANGLE_STEP)).astype(np.int64) % 256).astype(np.uint8)
    return out


def sa_values(codes: U8) -> F32:
    """``(n, 2)`` float32 (size in pixels, orientation in degrees) of :func:`sa_codes`' bytes."""
    out = np.empty(codes.shape, np.float32)
    out[:, 0] = np.exp2((codes[:, 0].astype(np.float32) + np.float32(SCALE_MIN)) * np.float32(SCALE_STEP))
    out[:, 1] = codes[:, 1].astype(np.float32) * np.float32(ANGLE_STEP)
    return out


def _image_blocks(n_images: int) -> int:
    """How many runs of equal high image bits a word's postings can fall into."""
    return max(1, -(-n_images // (1 << IMAGE_LO_BITS)))


def _run_keys(words: npt.NDArray[np.integer[Any]], image: npt.NDArray[np.integer[Any]], blocks: int) -> I64:
    """Each posting's (word, high image bits) run: ``word * blocks + image >> IMAGE_LO_BITS``."""
    key = words.astype(np.int64)
    if blocks > 1:
        key *= blocks
        key += np.asarray(image, np.int64) >> IMAGE_LO_BITS
    return key


#: Postings converted at a time by :func:`from_format2`.
_CONVERT_ROWS = 1 << 24


def from_format2(arrays: Mapping[str, Any], n_images: int) -> dict[str, npt.NDArray[Any]]:
    """The postings arrays of a format-2 snapshot (20-byte postings: the image as
    int32, size and orientation as float16) in this format, a few million postings
    at a time: exactly what quantising every work again would give, without
    reading one. Raises ValueError when a word's postings do not ascend by image."""
    offsets = np.asarray(arrays["offsets"], np.int64)
    image, sa16 = arrays["image"], arrays["scale_angle"]
    n_words = offsets.shape[0] - 1
    blocks = _image_blocks(n_images)
    n = int(offsets[-1])
    if image.shape[0] != n or sa16.shape != (n, 2):
        raise ValueError("inconsistent format-2 postings arrays")
    counts = np.zeros(n_words * blocks, np.int64)
    image_lo = np.empty(n, np.uint16)
    sa = np.empty((n, 2), np.uint8)
    w0 = 0
    while w0 < n_words:
        w1 = int(np.searchsorted(offsets, offsets[w0] + _CONVERT_ROWS, side="right")) - 1
        w1 = min(n_words, max(w1, w0 + 1))
        lo, hi = int(offsets[w0]), int(offsets[w1])
        img = np.asarray(image[lo:hi], np.int64)
        if img.shape[0] and (int(img.min()) < 0 or int(img.max()) >= n_images):
            raise ValueError("a format-2 posting names an image that does not exist")
        words = np.repeat(np.arange(w0, w1, dtype=np.int64), np.diff(offsets[w0 : w1 + 1]))
        key = _run_keys(words, img, blocks)
        if key.shape[0] > 1 and bool((np.diff(words) == 0)[np.diff(img) < 0].any()):
            raise ValueError("a word's format-2 postings do not ascend by image")
        counts[w0 * blocks : w1 * blocks] = np.bincount(key - w0 * blocks, minlength=(w1 - w0) * blocks)
        image_lo[lo:hi] = (img & 0xFFFF).astype(np.uint16)
        sa[lo:hi] = sa_codes(np.asarray(sa16[lo:hi]))
        w0 = w1
    runs = np.zeros(n_words * blocks + 1, np.int64)
    np.cumsum(counts, out=runs[1:])
    return {"offsets": offsets, "runs": runs, "image_lo": image_lo, "sig": np.asarray(arrays["sig"]),
            "xy": np.asarray(arrays["xy"]), "sa": sa}


def _fixed_xy(xy: F32) -> U16:
    """Work-frame positions in :data:`XY_UNIT` steps (rounded, clipped to uint16)."""
    out: U16 = np.clip(np.rint(xy / np.float32(XY_UNIT)), 0, 65535).astype(np.uint16)
    return out


def _top_images(votes: npt.NDArray[Any], nkp: npt.NDArray[np.int64], top: int) -> npt.NDArray[np.int64]:
    """The ``top`` images by votes normalised by their keypoint count, best first
    (equal ranks: the lower image first); images without a vote never.

    Only the images that got a vote are ranked, and only the best of them sorted,
    not every image of the registry (200,000 at 100,000 works)."""
    voted = np.flatnonzero(votes > 0)
    rank = votes[voted] / np.sqrt(np.maximum(nkp[voted], 1).astype(np.float64) / 1000.0 + 1.0)
    if voted.shape[0] > top > 0:
        kth = np.partition(rank, voted.shape[0] - top)[voted.shape[0] - top]
        best = np.flatnonzero(rank >= kth)
        voted, rank = voted[best], rank[best]
    return voted[np.lexsort((voted, -rank))][:top]


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
    """Postings sorted by word (CSR), and within a word by image.

    ``runs`` splits each word's postings by the high bits of their image number:
    with ``b`` = :attr:`blocks`, word ``w``'s postings of images whose number
    shifted right by :data:`IMAGE_LO_BITS` is ``h`` are ``runs[w * b + h]`` up to
    ``runs[w * b + h + 1]``, and ``offsets`` is ``runs[::b]``. A posting keeps
    only the low bits (``image_lo``)."""

    offsets: I64
    runs: I64
    image_lo: U16
    sig: U64
    xy: U16  # fixed point, XY_UNIT pixels
    sa: U8  # (size, orientation) codes, sa_codes

    @property
    def n(self) -> int:
        return int(self.sig.shape[0])

    @property
    def blocks(self) -> int:
        return int(self.runs.shape[0] - 1) // max(1, int(self.offsets.shape[0]) - 1)

    def images(self) -> I32:
        """Every posting's image number (int32, as long as the postings)."""
        high = (np.arange(self.runs.shape[0] - 1, dtype=np.int32) % np.int32(self.blocks)) << IMAGE_LO_BITS
        out: I32 = np.repeat(high, np.diff(self.runs))
        out |= self.image_lo
        return out


@dataclass
class _Quantised:
    words: I32
    sig: U64
    image: I32  # one value broadcast for a pending part
    xy: U16
    sa: U8


@dataclass(frozen=True)
class QuantisedWork:
    """:meth:`PostingsIndex.quantise`'s result: the (words, signatures, positions,
    size and orientation codes) of a work's direct and mirrored image (None: no
    keypoints), under ``vocab``."""

    vocab: Vocabulary | None
    parts: tuple[tuple[I32, U64, U16, U8] | None, tuple[I32, U64, U16, U8] | None]


@dataclass
class _ImageInfo:
    work_id: int
    owner_id: int
    mirrored: bool
    n_kp: int



@dataclass(kw_only=True)
class PostingsIndex:
    """Postings of registered works under one vocabulary, in memory only.

    :attr:`generation` is bumped whenever the set of searchable works changes.
    """

    n_coarse: int = 2
    n_fine: int = 2
    n_sub: int = 2
    vocab: Vocabulary | None = None
    _works: dict[int, StoredWork] = field(default_factory=dict)
    _images: list[_ImageInfo] = field(default_factory=list)
    _image_of: dict[tuple[int, bool], int] = field(default_factory=dict)
    _alive: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    _owner: I32 = field(default_factory=lambda: np.zeros(0, np.int32))
    _nkp: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    #: The buffers ``_alive``, ``_owner`` and ``_nkp`` are views of (:meth:`_push_image`).
    _image_bufs: tuple[npt.NDArray[np.bool_], I32, npt.NDArray[np.int64]] | None = None
    _pending: list[_Quantised] = field(default_factory=list)
    _main: _Segment | None = None
    _delta: _Segment | None = None
    _delta_parts: list[_Quantised] = field(default_factory=list)
    #: Bumped whenever the set of searchable works changes.
    generation: int = 0

    def _reset(self, vocab: Vocabulary | None) -> None:
        """Forget every work; ``vocab`` becomes the vocabulary."""
        self.vocab = vocab
        self._works.clear()
        self.generation += 1
        self._images.clear()
        self._image_of.clear()
        self._alive = np.zeros(0, bool)
        self._owner = np.zeros(0, np.int32)
        self._nkp = np.zeros(0, np.int64)
        self._main = self._delta = None
        self._delta_parts.clear()
        self._pending.clear()

    def _drop(self, work_id: int) -> None:
        if self._works.pop(work_id, None) is None:
            return
        self.generation += 1
        for m in (False, True):
            img = self._image_of.pop((work_id, m), None)
            if img is not None:
                self._alive[img] = False

    def _push_image(self, owner_id: int, n_kp: int) -> None:
        """Append a live image's entries to ``_alive``, ``_owner`` and ``_nkp`` in
        amortised constant time: they are views of buffers that double when full
        (``np.append`` copied all three per image, quadratic over a full load;
        docs/benchmarks.md, "A full load in threads"). Arrays put there otherwise
        (a snapshot's, a reset's) are copied into new buffers first."""
        n = self._alive.shape[0]
        b = self._image_bufs
        if (b is None or b[0].shape[0] <= n or self._alive.base is not b[0] or self._owner.base is not b[1]
                or self._nkp.base is not b[2]):
            cap = max(1024, 2 * (n + 1))
            b = (np.empty(cap, bool), np.empty(cap, np.int32), np.empty(cap, np.int64))
            b[0][:n], b[1][:n], b[2][:n] = self._alive, self._owner, self._nkp
            self._image_bufs = b
        b[0][n], b[1][n], b[2][n] = True, owner_id, n_kp
        self._alive, self._owner, self._nkp = b[0][: n + 1], b[1][: n + 1], b[2][: n + 1]

    def quantise(self, w: StoredWork) -> QuantisedWork:
        """A work's postings under the current vocabulary, before they are
        inserted (:meth:`_insert`). Reads nothing but the vocabulary, so several
        threads may quantise works at once (the compiled parts release the GIL)."""
        if self.vocab is None:
            return QuantisedWork(self.vocab, (None, None))
        parts: list[tuple[I32, U64, U16, U8] | None] = []
        for f in (w.direct, w.mirrored):
            if not len(f):
                parts.append(None)
                continue
            rows, sig, words = self.vocab.assign(f.desc)
            sa = sa_codes(np.stack([f.scale, f.angle], axis=1).astype(np.float16))
            parts.append((words, sig, _fixed_xy(f.xy[rows]), sa[rows]))
        return QuantisedWork(self.vocab, (parts[0], parts[1]))

    def _insert(self, w: StoredWork, quantised: QuantisedWork | None = None) -> None:
        """Make ``w`` searchable; ``quantised`` is :meth:`quantise`'s result for it
        under the current vocabulary (computed here when None)."""
        if quantised is None or quantised.vocab is not self.vocab:
            quantised = self.quantise(w)
        # Descriptors stay in the store (for retraining); memory keeps postings only.
        self._works[w.work_id] = replace(
            w, direct=LocalFeatures.empty(w.width, w.height),
            mirrored=LocalFeatures.empty(w.width, w.height), thumbs=np.zeros((0, 0, 0), np.uint8))
        self.generation += 1
        if self.vocab is None:
            return
        for mirrored, f, part in ((False, w.direct, quantised.parts[0]), (True, w.mirrored, quantised.parts[1])):
            img = len(self._images)
            self._images.append(_ImageInfo(w.work_id, w.owner_id, mirrored, len(f)))
            self._image_of[(w.work_id, mirrored)] = img
            self._push_image(w.owner_id, len(f))
            if part is None:
                continue
            words, sig, xy, sa = part
            # One image number for the whole part, broadcast (no memory per posting:
            # 1.7 GB less while a retrain at 100,000 works quantises every work).
            self._pending.append(_Quantised(words, sig, np.broadcast_to(np.int32(img), words.shape), xy, sa))

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
                parts.insert(0, _Quantised(words, m.sig, m.images(), m.xy, m.sa))
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
                               np.zeros((0, 2), np.uint16), np.zeros((0, 2), np.uint8))
            self._main = self._build([empty], drop_dead=False)

    def _build(self, parts: list[_Quantised], *, drop_dead: bool) -> _Segment:
        """One segment of ``parts`` (consumed: the list is emptied as they are copied in).

        The same arrays as a stable sort by (word, high image bits) of the parts
        concatenated, made by a counting sort that copies one part at a time
        into the final arrays and frees it: the peak is the parts plus one
        segment, not several full copies (a retrain at 100,000 works holds about
        420 million postings). Parts come in ascending image order (a work's
        images are numbered as it is added), so that is a stable sort by word."""
        assert self.vocab is not None
        n_words = self.vocab.size
        blocks = _image_blocks(len(self._images))
        alive = self._alive if drop_dead and self._alive.shape[0] else None
        counts = np.zeros(n_words * blocks, np.int64)
        keeps: list[npt.NDArray[np.bool_] | None] = []
        for p in parts:
            keep = alive[p.image] if alive is not None else None
            if keep is not None and keep.all():
                keep = None
            keeps.append(keep)
            w = p.words if keep is None else p.words[keep]
            if w.shape[0]:
                key = _run_keys(w, p.image if keep is None else p.image[keep], blocks)
                uk, c = np.unique(key, return_counts=True)
                counts[uk] += c
        runs = np.zeros(n_words * blocks + 1, np.int64)
        np.cumsum(counts, out=runs[1:])
        del counts
        n = int(runs[-1])
        image_lo = np.empty(n, np.uint16)
        sig = np.empty(n, np.uint64)
        xy = np.empty((n, 2), np.uint16)
        sa = np.empty((n, 2), np.uint8)
        cursor = runs[:-1].copy()
        for i, keep in enumerate(keeps):
            p = parts[i]
            parts[i] = None  # type: ignore[call-overload]  # freed once copied in
            if keep is None:
                w, pi, ps, pxy, psa = p.words, p.image, p.sig, p.xy, p.sa
            else:
                w, pi, ps, pxy, psa = p.words[keep], p.image[keep], p.sig[keep], p.xy[keep], p.sa[keep]
            del p
            m = w.shape[0]
            if not m:
                continue
            key = _run_keys(w, pi, blocks)
            order = np.argsort(key, kind="stable")
            sk = key[order]
            first = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])  # where each run starts
            run = np.repeat(first, np.diff(np.r_[first, m]))
            pos = cursor[sk] + (np.arange(m) - run)
            image_lo[pos] = (np.broadcast_to(pi, (m,))[order] & 0xFFFF).astype(np.uint16)
            sig[pos], xy[pos], sa[pos] = ps[order], pxy[order], psa[order]
            cursor[sk[first]] += np.diff(np.r_[first, m])
        parts.clear()
        return _Segment(np.ascontiguousarray(runs[::blocks]), runs, image_lo, sig, xy, sa)

    @property
    def work_ids(self) -> list[int]:
        return sorted(self._works)

    def work(self, work_id: int) -> StoredWork | None:
        return self._works.get(work_id)

    @property
    def works(self) -> Mapping[int, StoredWork]:
        """Every searchable work by id (read-only). A work inserted again is a new object,
        so a caller that keeps its own derived state can tell what changed by identity."""
        return MappingProxyType(self._works)

    def search(
        self, q: LocalFeatures, *, top: int = 24, owner_ids: Sequence[int] | None = None,
        work_ids: Sequence[int] | None = None,
    ) -> list[Correspondences]:
        """Best-voted (work, mirror) images with their tentative correspondences.

        ``work_ids`` restricts the search to those works (a back-scan of newly
        registered works): the same postings walk, with the others' images masked."""
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
        if work_ids is not None:
            img_work = np.fromiter((i.work_id for i in self._images), np.int64, len(self._images))
            alive = alive & np.isin(img_work, np.asarray(list(work_ids), np.int64))
        parts_q: list[I32] = []
        parts_h: list[npt.NDArray[np.uint8]] = []
        parts_i: list[I32] = []
        parts_s: list[npt.NDArray[np.int64]] = []
        parts_l: list[npt.NDArray[np.int64]] = []
        segs = [s for s in (self._main, self._delta) if s is not None]
        for si, seg in enumerate(segs):
            at, pos, ham, image = hamming_hits(seg.offsets, seg.runs, seg.sig, words, qsig, rows, HE_RADIUS,
                                               HITS_PER_KEYPOINT, seg.image_lo, alive)
            # One correspondence per (image, query keypoint): the closest
            # signature, kept only when it is distinctive. A query keypoint that
            # matches several places of the same work about equally well (arcs
            # of circles, repeated strokes) is ambiguous: its second-best
            # posting at another location must be AMBIGUITY_MARGIN bits farther.
            # (A work's postings all live in one segment.)
            sel = distinct_best(rows[at], image, ham, pos, seg.xy, SAME_PLACE_PX, AMBIGUITY_MARGIN, unit=XY_UNIT)
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
        cand = _top_images(votes, self._nkp, top)
        # The hits of the candidate images, grouped by image (original order
        # within), with their work-side geometry, in one pass.
        keep = np.flatnonzero(np.isin(image, cand))
        keep = keep[np.argsort(image[keep], kind="stable")]
        k_img, k_seg, k_loc = image[keep], seg_of[keep], local[keep]
        w_xy = np.empty((keep.shape[0], 2), np.float32)
        w_sa = np.empty((keep.shape[0], 2), np.float32)
        for si, seg in enumerate(segs):
            m = k_seg == si
            w_xy[m] = seg.xy[k_loc[m]].astype(np.float32) * np.float32(XY_UNIT)
            w_sa[m] = sa_values(seg.sa[k_loc[m]])
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

    def image_words(self) -> list[tuple[int, bool, int, I32]]:
        """Every searchable (work, mirror) image: ``(work_id, mirrored, keypoints,
        words)``, one word per posting (pending postings are merged into the main
        segment first). What :mod:`matching.sparse_words` writes after a retrain."""
        if self.vocab is None:
            return []
        self._pending_to_main()
        main = self._main
        assert main is not None
        words = np.repeat(np.arange(main.offsets.shape[0] - 1, dtype=np.int32), np.diff(main.offsets))
        image = main.images()
        order = np.argsort(image, kind="stable")
        by_image = words[order]
        bounds = np.searchsorted(image[order], np.arange(len(self._images) + 1))
        return [(info.work_id, info.mirrored, info.n_kp, by_image[bounds[i] : bounds[i + 1]])
                for i, info in enumerate(self._images) if self._alive[i]]

    # ---- state as arrays (what a snapshot holds)

    def export_state(self) -> dict[str, npt.NDArray[Any]]:
        """Every work and posting as named arrays (pending postings are merged
        into the main segment first)."""
        self._pending_to_main()
        main = self._main
        assert main is not None
        ids = sorted(self._works)
        works = [self._works[i] for i in ids]
        return {
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
            "runs": main.runs,
            "image_lo": main.image_lo,
            "sig": main.sig,
            "xy": main.xy,
            "sa": main.sa,
        }

    #: The arrays of :meth:`export_state` worth memory-mapping (the postings).
    MAPPED = ("offsets", "runs", "image_lo", "sig", "xy", "sa")

    def import_state(self, vocab: Vocabulary, arrays: Mapping[str, Any]) -> None:
        """Replace the state with ``arrays`` (from :meth:`export_state`) under
        ``vocab``. Raises ValueError (changing nothing) when they do not fit."""
        a = {k: np.asarray(v) for k, v in arrays.items()}
        works, kinds = a["works"], a["kinds"]
        pdq, pdq_counts = a["pdq"], a["pdq_counts"]
        img_work, img_owner = a["img_work"], a["img_owner"]
        img_mirrored, img_nkp, alive = a["img_mirrored"], a["img_nkp"], a["alive"]
        if "runs" not in a:
            raise ValueError("postings arrays of another format")
        seg = _Segment(a["offsets"], a["runs"], a["image_lo"], a["sig"], a["xy"], a["sa"])
        if (seg.xy.dtype != np.uint16 or seg.sig.dtype != np.uint64 or seg.image_lo.dtype != np.uint16
                or seg.sa.dtype != np.uint8 or seg.runs.dtype != np.int64):
            raise ValueError("postings arrays of another format")
        n_words = seg.offsets.shape[0] - 1
        if (n_words < 1 or (seg.runs.shape[0] - 1) % n_words
                or seg.blocks != _image_blocks(img_work.shape[0])
                or not np.array_equal(seg.runs[::seg.blocks], seg.offsets)
                or not seg.image_lo.shape[0] == seg.sig.shape[0] == seg.xy.shape[0] == seg.sa.shape[0]
                == int(seg.runs[-1])):
            raise ValueError("inconsistent postings arrays")
        if seg.offsets.shape[0] != vocab.size + 1 or not (
                img_work.shape[0] == img_owner.shape[0] == img_mirrored.shape[0] == img_nkp.shape[0]
                == alive.shape[0]) or pdq_counts.shape[0] != works.shape[0]:
            raise ValueError("inconsistent array shapes")
        self._reset(vocab)
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
