"""PdqIndex: exact Hamming lookup over registered PDQ variants."""

from __future__ import annotations

import numpy as np

from matching.index.pdq import PdqIndex
from matching.signals import hamming


def _hashes(rng: np.random.Generator, k: int) -> np.ndarray:
    return np.packbits(rng.integers(0, 2, (k, 256), dtype=np.uint8), axis=1)


def _flip(h: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    u = np.unpackbits(h.copy())
    u[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(u)


def test_matches_brute_force_and_filters() -> None:
    rng = np.random.default_rng(0)
    ix = PdqIndex()
    works = {w: _hashes(rng, 8) for w in range(1, 51)}
    for w, h in works.items():
        ix.add(w, owner_id=w % 5, hashes=h)
    assert len(ix) == 400
    q = _flip(works[7][3], 12, rng)
    got = ix.search(q, max_distance=31)
    want = {w: int(hamming(h, q).min()) for w, h in works.items() if hamming(h, q).min() <= 31}
    assert got == want == {7: 12}
    assert ix.search(q, 64) == {w: int(hamming(h, q).min()) for w, h in works.items() if hamming(h, q).min() <= 64}
    assert ix.search(q, 31, owner_ids=[2]) == {7: 12}
    assert ix.search(q, 31, owner_ids=[1, 3]) == {}


def test_replace_and_remove() -> None:
    rng = np.random.default_rng(1)
    ix = PdqIndex()
    a, b = _hashes(rng, 8), _hashes(rng, 8)
    ix.add(1, 1, a)
    assert ix.search(a[0]) == {1: 0}
    ix.add(1, 1, b)  # re-registering replaces
    assert len(ix) == 8
    assert ix.search(a[0]) == {}
    assert ix.search(b[2]) == {1: 0}
    ix.remove(1)
    assert len(ix) == 0 and ix.search(b[2]) == {}
    ix.add(1, 2, a)
    assert ix.search(a[5], owner_ids=[2]) == {1: 0}
    assert PdqIndex().search(a[0]) == {}


# Multi-index hashing against brute force. The reference below knows nothing of
# chunks or scans: every stored hash of every live work, the smallest distance.

Works = dict[int, tuple[int, np.ndarray]]  # work id -> (owner id, (k, 32) hashes)


def _brute(works: Works, q: np.ndarray, r: int, owners: list[int] | None = None,
           wids: list[int] | None = None) -> dict[int, int]:
    live = [(w, h) for w, (o, h) in works.items()
            if (owners is None or o in owners) and (wids is None or w in wids) and h.shape[0]]
    if not live:
        return {}
    d = hamming(np.concatenate([h for _, h in live]), q).tolist()
    out: dict[int, int] = {}
    for w, dw in zip([w for w, h in live for _ in range(h.shape[0])], d, strict=True):
        if dw <= r and dw < out.get(w, 257):
            out[w] = dw
    return out


def _flip_in_chunks(h: np.ndarray, per_chunk: list[int], rng: np.random.Generator) -> np.ndarray:
    """Flip ``per_chunk[j]`` bits among bits ``16j .. 16j + 15`` (chunk j = bytes 2j, 2j + 1)."""
    u = np.unpackbits(h.copy())
    for j, k in enumerate(per_chunk):
        u[16 * j + rng.choice(16, k, replace=False)] ^= 1
    return np.packbits(u)


def _pair() -> tuple[PdqIndex, PdqIndex]:
    """The same rows behind each path: MIH forced at any size and any distance, and scan only."""
    return PdqIndex(mih_min_rows=0, mih_max_distance=64, mih_max_fraction=1.0), PdqIndex(mih_min_rows=10**9)


def test_mih_equals_scan_and_brute_force_with_planted_near_duplicates() -> None:
    rng = np.random.default_rng(2)
    mih, scan = _pair()
    works: Works = {w: (w % 7, _hashes(rng, 8)) for w in range(1, 301)}
    for w, (o, h) in works.items():
        mih.add(w, o, h)
        scan.add(w, o, h)
    for dist in range(41):
        src = int(rng.integers(1, 301))
        q = _flip(works[src][1][int(rng.integers(8))], dist, rng)
        for r in (0, 15, 16, 31, 32, 40, 47, 64):
            want = _brute(works, q, r)
            assert mih.search(q, r) == scan.search(q, r) == want
            assert (src in want) == (dist <= r)
            assert list(mih.search(q, r).items()) == list(scan.search(q, r).items())  # same order too
        owners, wids = [works[src][0], 3], [src, 5, 6]
        assert mih.search(q, 31, owner_ids=owners) == scan.search(q, 31, owner_ids=owners) == _brute(
            works, q, 31, owners=owners)
        assert mih.search(q, 40, work_ids=wids) == _brute(works, q, 40, wids=wids)
        assert mih.search(q, 31, owner_ids=[], work_ids=wids) == {}
    q = _flip(works[9][1][0], 31, rng)
    mih.search(q, 31)
    scan.search(q, 31)
    assert 0 < mih.last_verified < len(mih) == scan.last_verified  # each index took the path it was built for


def test_mih_finds_the_worst_case_split_at_every_distance() -> None:
    """A hash at exactly ``r = 16a + b`` bits spread as evenly as the pigeonhole allows.

    Either no chunk is closer than ``a`` (b chunks at a + 1, the rest at a), or only one is, at
    ``a - 1`` (b + 1 chunks at a + 1). Each split is tried in order and in three shuffles of the
    chunks; a probe radius one bit too small in any chunk misses some of them.
    """
    rng = np.random.default_rng(3)
    base = _hashes(rng, 1)[0]
    for r in range(65):
        a, b = divmod(r, 16)
        splits = [[a + 1] * b + [a] * (16 - b)]
        if a and b < 15:
            splits.append([a + 1] * (b + 1) + [a] * (14 - b) + [a - 1])
        splits += [list(rng.permutation(s)) for s in splits for _ in range(3)]
        assert all(sum(split) == r for split in splits)
        mih, _ = _pair()
        planted: Works = {w: (1, _flip_in_chunks(base, split, rng)[None]) for w, split in enumerate(splits)}
        for w, (o, h) in planted.items():
            mih.add(w, o, h)
        mih.add(100, 1, _hashes(rng, 8))
        assert mih.search(base, r) == _brute(planted, base, r) == dict.fromkeys(planted, r), (r, splits)
        assert mih.search(base, r - 1) == {}


def test_mih_and_scan_agree_through_add_replace_remove() -> None:
    rng = np.random.default_rng(4)
    mih, scan = _pair()
    works: Works = {}
    for step in range(60):
        op = rng.integers(4)
        w = int(rng.integers(1, 80))
        if op < 2:  # add or replace
            h = _hashes(rng, int(rng.integers(0, 9)))
            if works and rng.integers(2):  # a near-duplicate of a live hash, so results are not empty
                _, hs = works[int(rng.choice(list(works)))]
                if hs.shape[0]:
                    h = np.concatenate([h, _flip(hs[0], int(rng.integers(0, 41)), rng)[None]])
            works[w] = (int(rng.integers(3)), h)
            mih.add(w, works[w][0], h)
            scan.add(w, works[w][0], h)
        elif op == 2:  # remove, live or not
            works.pop(w, None)
            mih.remove(w)
            scan.remove(w)
        if step % 3:  # sometimes several changes before the next search
            continue
        assert len(mih) == len(scan) == sum(h.shape[0] for _, h in works.values())
        live = [h for _, h in works.values() if h.shape[0]]
        q = _flip(live[int(rng.integers(len(live)))][0], int(rng.integers(0, 41)), rng) if live else _hashes(rng, 1)[0]
        for r in (16, 31, 40):
            assert mih.search(q, r) == scan.search(q, r) == _brute(works, q, r)
        assert mih.search(q, 31, owner_ids=[1]) == _brute(works, q, 31, owners=[1])


def test_default_thresholds_fall_back_to_the_scan_with_the_same_result() -> None:
    rng = np.random.default_rng(5)
    works: Works = {w: (w % 3, _hashes(rng, 8)) for w in range(9000)}  # 72,000 rows: above the default 65,536
    ix = PdqIndex()
    for w, (o, h) in works.items():
        ix.add(w, o, h)
    q = _flip(works[10][1][2], 20, rng)
    assert ix.search(q, 64) == _brute(works, q, 64)  # the engine's radius, past mih_max_distance: scan
    assert ix.last_verified == len(ix) == 72_000
    assert ix.search(q, 47) == _brute(works, q, 47)  # MIH, about 3% of random rows
    assert 0 < ix.last_verified < 0.05 * 72_000
    assert ix.search(q, 31) == _brute(works, q, 31) == {10: 20}
    assert 0 < ix.last_verified < 0.01 * 72_000
    tight = PdqIndex(mih_max_fraction=0.0)  # every candidate set is too large: scan
    for w, (o, h) in works.items():
        tight.add(w, o, h)
    assert tight.search(q, 31) == {10: 20}
    assert tight.last_verified == 72_000
    small = PdqIndex()  # below mih_min_rows: scan
    small.add(1, 1, works[10][1])
    assert small.search(q, 31) == {1: 20} and small.last_verified == 8


def test_changes_after_the_tables_are_built_are_searched_without_a_rebuild() -> None:
    """A registration or removal at scale is visible to the next search, exactly, and costs no
    rebuild of the chunk tables: added rows are checked one by one, removed ones masked."""
    rng = np.random.default_rng(6)
    works: Works = {w: (w % 3, _hashes(rng, 8)) for w in range(1200)}  # 9,600 rows
    ix = PdqIndex(mih_min_rows=8192)
    for w, (o, h) in works.items():
        ix.add(w, o, h)
    q0 = _flip(works[10][1][2], 20, rng)
    assert ix.search(q0, 31) == {10: 20}
    base = ix.last_verified  # the MIH candidates of this query
    assert base < 0.01 * 9600
    # One new work near the query, one removed: both seen at once, and the same candidates
    # plus the 8 new rows are verified (no table rebuild, no scan).
    works[5000] = (1, np.concatenate([_hashes(rng, 7), _flip(q0, 5, rng)[None]]))
    ix.add(5000, 1, works[5000][1])
    ix.remove(10)
    works.pop(10)
    assert ix.search(q0, 31) == _brute(works, q0, 31) == {5000: 5}
    assert ix.last_verified == base + 8
    assert len(ix) == 9600
    # Re-registering the removed work brings it back (its old rows stay masked).
    works[10] = (1, works.pop(5000)[1])
    ix.add(10, 1, works[10][1])
    ix.remove(5000)
    assert ix.search(q0, 31) == {10: 5} and len(ix) == 9600
    # Many changes: past an eighth added the tables are rebuilt, past a quarter removed the
    # dead rows dropped; every step stays exact.
    for step in range(700):
        w = int(rng.integers(0, 3000))
        if step % 2:
            works[w] = (w % 3, _hashes(rng, 8))
            ix.add(w, w % 3, works[w][1])
        else:
            works.pop(w, None)
            ix.remove(w)
        if step % 50 == 0:
            q = _flip(next(iter(works.values()))[1][0], int(rng.integers(0, 32)), rng)
            assert ix.search(q, 31) == _brute(works, q, 31)
            assert ix.search(q, 64, owner_ids=[2]) == _brute(works, q, 64, owners=[2])
    assert len(ix) == sum(h.shape[0] for _, h in works.values())
    for w in list(works)[: len(works) * 3 // 4]:
        works.pop(w)
        ix.remove(w)
    q = _flip(next(iter(works.values()))[1][3], 17, rng)
    assert ix.search(q, 31) == _brute(works, q, 31)
    assert len(ix) == sum(h.shape[0] for _, h in works.values())
    assert ix._dead * 4 <= ix._words.shape[0]  # the dead rows were dropped, not kept forever


def test_a_hash_that_differs_in_every_bit_is_256_bits_away_not_0() -> None:
    """The distance of the 256-bit complement: 256 (the scan once summed per-word
    counts in uint8, where 256 wraps to 0 and read as an exact copy)."""
    rng = np.random.default_rng(8)
    h = _hashes(rng, 2)
    ix = PdqIndex()
    ix.add(1, 1, h)
    q = np.bitwise_not(h[0])
    assert ix.search(q, 31) == {}
    assert ix.search(q, 256) == {1: min(256, int(np.unpackbits(h[1] ^ q).sum()))}
