"""In-memory PDQ lookup: every registered hash, Hamming distance, owner filter.

PDQ stays out of the vector index (Qdrant has no Hamming distance). The
hashes of every work's dihedral variants sit in one ``(n, 4)`` uint64 matrix,
filled from the stored hashes when a process starts and kept in step with the
registry's changes from then on.

A search takes one of two paths, with identical results:

- **Multi-index hashing** (Norouzi et al., "Fast search in Hamming space with
  multi-index hashing", CVPR 2012). The 256 bits split into 16 chunks of 16
  bits. Write ``r = 16a + b`` (``b < 16``): a hash within ``r`` bits of the
  query is within ``a`` bits of it in one of chunks ``0..b``, or within
  ``a - 1`` in one of the others (else its distance would be at least
  ``(b + 1)(a + 1) + (15 - b)a = r + 1``). So the rows worth checking are those
  whose chunk value lies within that radius of the query's in some chunk: 272
  probed values at ``r = 31``. Per chunk, the rows are kept sorted by chunk
  value with a 65,537-entry offset table, so each probe is two array reads.
  Only those candidates get the exact distance: about 0.4% of the rows at
  ``r <= 31``, 3.3% at 47 and 18% at 64 on random hashes, whatever the
  registry size. The tables cost 4 bytes per hash per chunk (64 bytes per
  hash, twice the hashes themselves) plus 8 MiB of offsets, and are built at
  the first such search (0.7 s CPU at 800,000 hashes). A registration does
  not rebuild them: hashes added since are checked one by one, a removed
  work's rows are masked, and the tables are rebuilt once the added rows
  outgrow an eighth of the index (the dead ones are dropped at a quarter).
- **Linear scan**: XOR + popcount over every row, compiled, one pass
  (:func:`matching._scan.hashes_within`; about 3 ns a row). It is exact and
  cheaper when the index is small (below ``mih_min_rows``), when
  ``max_distance`` exceeds ``mih_max_distance``, or when the probed buckets
  hold more than ``mih_max_fraction`` of the rows (wide radii, clustered
  hashes): a candidate costs about twenty scanned rows (a random read, and
  the probe lists sorted), so past about 5% of the rows the scan wins. At 64
  bits (the engine's radius) the probes cover about 20% of the rows: the scan.

Figures and thresholds: docs/benchmarks.md, "PDQ: multi-index hashing".
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import numpy.typing as npt

from matching._scan import hashes_within

__all__ = ["PdqIndex"]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

_CHUNKS = 16  # chunks of 16 bits: one uint16 each
_KEYS = 1 << 16
_CHUNK_ROWS = np.arange(_CHUNKS)[:, None]
_KEYS_1 = _KEYS + 1  # row length of the offset table


@cache
def _masks(radius: int) -> npt.NDArray[np.intp]:
    """Every 16-bit value with at most ``radius`` bits set (XOR masks to probe)."""
    v = np.arange(_KEYS, dtype=np.uint32)
    return v[np.bitwise_count(v) <= radius].astype(np.intp)


class PdqIndex:
    """Packed PDQ hashes of registered works, searchable by Hamming distance.

    ``mih_min_rows``: below this many rows every search scans.
    ``mih_max_distance``: searches with a wider ``max_distance`` scan.
    ``mih_max_fraction``: a search whose probed buckets hold more than this
    share of the rows scans instead of verifying them one by one.
    """

    def __init__(
        self, *, mih_min_rows: int = 65_536, mih_max_distance: int = 47, mih_max_fraction: float = 0.05,
    ) -> None:
        self.mih_min_rows = mih_min_rows
        self.mih_max_distance = mih_max_distance
        self.mih_max_fraction = mih_max_fraction
        #: Rows whose exact distance the last search computed (all rows when it scanned).
        self.last_verified = 0
        self._words = np.zeros((0, 4), np.uint64)
        self._work = np.zeros(0, np.int64)
        self._owner = np.zeros(0, np.int64)
        # Removed works' rows stay in the arrays, masked, until they are a quarter of them.
        self._alive = np.zeros(0, bool)
        self._dead = 0
        self._pending: dict[int, tuple[int, U8]] = {}  # by work id: a registry rebuild of n works is O(n)
        self._removed: set[int] = set()
        # Multi-index tables over rows 0.._indexed - 1, None until a search needs them: row ids
        # sorted by chunk value, chunk after chunk, in one (16 * n,) array, and per chunk the
        # positions where each value's rows start in it. Rows added since (the tail) are scanned,
        # so one registration costs no rebuild; the tables are rebuilt once the tail outgrows
        # max(mih_min_rows, an eighth of the rows).
        self._order: npt.NDArray[np.uint32] | None = None
        self._starts = np.zeros((0, _KEYS + 1), np.int64)
        self._indexed = 0

    def add(self, work_id: int, owner_id: int, hashes: U8) -> None:
        """Add (or replace) a work's hashes: ``(k, 32)`` uint8, PDQ bytes MSB-first."""
        h = np.ascontiguousarray(np.asarray(hashes, np.uint8).reshape(-1, 32))
        self.remove(work_id)  # masks compacted rows first; the new ones stay pending
        self._pending[int(work_id)] = (int(owner_id), h)

    def remove(self, work_id: int) -> None:
        wid = int(work_id)
        self._pending.pop(wid, None)
        self._removed.add(wid)

    def __len__(self) -> int:
        """Hashes searchable (removed works' rows not counted)."""
        self._compact()
        return int(self._words.shape[0]) - self._dead

    def _compact(self) -> None:
        if self._removed:
            dead = np.isin(self._work, np.fromiter(self._removed, np.int64)) & self._alive
            if dead.any():
                self._alive &= ~dead
                self._dead += int(dead.sum())
            self._removed.clear()
        if self._pending:
            items = list(self._pending.items())
            new = sum(h.shape[0] for _, (_, h) in items)
            self._words = np.concatenate([self._words] + [h.view(np.uint64) for _, (_, h) in items])
            self._work = np.concatenate([self._work] + [np.full(h.shape[0], w, np.int64) for w, (_, h) in items])
            self._owner = np.concatenate([self._owner] + [np.full(h.shape[0], o, np.int64) for _, (o, h) in items])
            self._alive = np.concatenate([self._alive, np.ones(new, bool)])
            self._pending.clear()
        if self._dead and self._dead * 4 > self._words.shape[0]:
            keep = self._alive
            self._words, self._work, self._owner = self._words[keep], self._work[keep], self._owner[keep]
            self._alive = np.ones(self._words.shape[0], bool)
            self._dead = 0
            self._order, self._indexed = None, 0

    def _tables(self) -> tuple[npt.NDArray[np.uint32], I64]:
        n = self._words.shape[0]
        if self._order is None or n - self._indexed > max(self.mih_min_rows, n // 8):
            chunks = self._words.view(np.uint16)  # (n, 16): bytes 2j, 2j+1 are chunk j
            order = np.empty((_CHUNKS, n), np.uint32)
            starts = np.empty((_CHUNKS, _KEYS + 1), np.int64)
            starts[:, 0] = 0
            for j in range(_CHUNKS):
                col = np.ascontiguousarray(chunks[:, j])
                order[j] = np.argsort(col, kind="stable")
                np.cumsum(np.bincount(col, minlength=_KEYS), out=starts[j, 1:])
            starts += np.arange(_CHUNKS, dtype=np.int64)[:, None] * n
            self._order, self._starts, self._indexed = order.reshape(-1), starts, n
        return self._order, self._starts

    def _candidates(self, q: npt.NDArray[np.uint64], max_distance: int) -> I64 | None:
        """Sorted rows that may lie within ``max_distance``; None when a scan is cheaper."""
        n = self._words.shape[0]
        if n < self.mih_min_rows or not 0 <= max_distance <= self.mih_max_distance:
            return None
        order, starts = self._tables()
        # max_distance = 16a + b: a row within it has one of chunks 0..b within a bits, or one of
        # chunks b+1..15 within a - 1 (else its distance is at least (b+1)(a+1) + (15-b)a = 16a + b + 1).
        a, b = divmod(max_distance, _CHUNKS)
        qc = q.view(np.uint16).astype(np.intp)
        near = (qc[: b + 1, None] ^ _masks(a)[None, :]) + _CHUNK_ROWS[: b + 1] * _KEYS_1
        probes = [near.ravel()]
        if a and b + 1 < _CHUNKS:
            far = (qc[b + 1 :, None] ^ _masks(a - 1)[None, :]) + _CHUNK_ROWS[b + 1 :] * _KEYS_1
            probes.append(far.ravel())
        flat = starts.reshape(-1)  # chunk j's value v at j * (2^16 + 1) + v
        keys = np.concatenate(probes)
        lo = flat[keys]
        size = flat[keys + 1] - lo
        total = int(size.sum())
        tail = n - self._indexed  # rows added since the tables were built: all checked
        if total + tail > self.mih_max_fraction * n:
            return None
        # Positions lo[i] .. lo[i] + size[i] - 1 of every probed bucket, in one array.
        shift = np.repeat(lo - (np.cumsum(size) - size), size)
        rows = np.sort(order.take(np.arange(total, dtype=np.int64) + shift)).astype(np.int64)
        # np.unique costs three times this sort-and-compare on a few thousand rows (numpy 2.4)
        if rows.size:
            rows = rows[np.concatenate(([True], rows[1:] != rows[:-1]))]
        return np.concatenate([rows, np.arange(self._indexed, n, dtype=np.int64)]) if tail else rows

    def search(
        self, query: U8, max_distance: int = 31, owner_ids: Sequence[int] | None = None,
        work_ids: Sequence[int] | None = None,
    ) -> dict[int, int]:
        """Smallest distance per work, for works with a hash within ``max_distance`` bits.

        Exact on both paths; ties keep row order, so the two give the same dict.
        """
        self._compact()
        self.last_verified = 0
        if self._words.shape[0] == self._dead:
            return {}
        q = np.ascontiguousarray(np.asarray(query, np.uint8).reshape(32)).view(np.uint64)
        rows = self._candidates(q, max_distance)
        self.last_verified = int(self._words.shape[0] if rows is None else rows.shape[0])
        # Distance first, filters on the few rows within it: the owner and work columns are only
        # read (and the filters only tested) for those.
        idx, d = hashes_within(self._words, q, max_distance, rows)
        if self._dead:
            keep = self._alive[idx]
            idx, d = idx[keep], d[keep]
        if owner_ids is not None:
            keep = np.isin(self._owner[idx], np.asarray(list(owner_ids), np.int64))
            idx, d = idx[keep], d[keep]
        if work_ids is not None:
            keep = np.isin(self._work[idx], np.asarray(list(work_ids), np.int64))
            idx, d = idx[keep], d[keep]
        if not idx.size:
            return {}
        order = np.argsort(d, kind="stable")
        out: dict[int, int] = {}
        for w, dist in zip(self._work[idx[order]].tolist(), d[order].tolist(), strict=True):
            out.setdefault(int(w), int(dist))
        return out
