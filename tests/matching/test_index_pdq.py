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
