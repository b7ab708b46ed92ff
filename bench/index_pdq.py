"""PDQ lookup cost: PdqIndex's scan vs its multi-index hashing (MIH), CPU ms per query.

    python bench/index_pdq.py --works 10000 100000 --variants 8 --queries 300

For each registry size one process builds two indexes over the same random
hashes (``w % 20`` owners): the default (MIH from 65,536 rows, at
``max_distance <= 47``, while the probed buckets hold at most 5% of the rows)
and one that always scans. Queries: planted
near-duplicates of a random registered hash at 0, 8, 16, 24 and 31 bits, and
random hashes, at ``max_distance = 31``; every answer of the two is compared.
Then, at the largest size, MIH forced at wider distances and, on small
registries, MIH forced below the row threshold (how the defaults were chosen).
``--layouts`` also times the old ``(n, 32)`` uint8 scan against the
``(n, 4)`` uint64 one (the earlier table in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import numpy.typing as npt

from matching.index.pdq import PdqIndex

U8 = npt.NDArray[np.uint8]
PLANTED = (0, 8, 16, 24, 31)


def _random(rng: np.random.Generator, n: int) -> U8:
    return np.packbits(rng.integers(0, 2, (n, 256), dtype=np.uint8), axis=1)


def _flip(h: U8, bits: int, rng: np.random.Generator) -> U8:
    u = np.unpackbits(h.copy())
    u[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(u)


def _fill(ix: PdqIndex, m: U8, variants: int) -> float:
    t = time.process_time()
    for w in range(m.shape[0] // variants):
        ix.add(w, w % 20, m[w * variants : (w + 1) * variants])
    len(ix)
    return (time.process_time() - t) * 1000


def _times(ix: PdqIndex, qs: list[U8], r: int) -> tuple[list[float], list[dict[int, int]], list[int]]:
    ms, res, verified = [], [], []
    for q in qs:
        t = time.process_time()
        res.append(ix.search(q, r))
        ms.append((time.process_time() - t) * 1000)
        verified.append(ix.last_verified)
    return ms, res, verified


def _numpy_scan(words: npt.NDArray[np.uint64], q: U8, r: int) -> tuple[float, npt.NDArray[np.intp]]:
    """The scan as it was before the compiled one (four arrays as large as the hashes), CPU ms."""
    qw = np.ascontiguousarray(q).view(np.uint64)
    t = time.process_time()
    c = np.bitwise_count(words ^ qw)
    d = c[:, 0].astype(np.int64) + c[:, 1]
    d += c[:, 2]
    d += c[:, 3]
    idx = np.flatnonzero(d <= r)
    return (time.process_time() - t) * 1000, idx


def _stat(ms: list[float]) -> str:
    return f"{np.median(ms):.3f} | {np.percentile(ms, 95):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--works", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--variants", type=int, default=8)
    ap.add_argument("--queries", type=int, default=300, help="per registry size, split over the query kinds")
    ap.add_argument("--layouts", action="store_true", help="also time (n, 32) uint8 rows vs (n, 4) uint64 words")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    per_kind = max(1, args.queries // (len(PLANTED) + 1))
    print("| works x variants | queries | scan median / p95 ms | MIH median / p95 ms | median ratio MIH/scan"
          " | rows verified by MIH (median) |")
    print("|---|---|---|---|---|---|")
    m = _random(rng, 1)
    mih = scan = PdqIndex()
    for works in args.works:
        n = works * args.variants
        m = _random(rng, n)
        mih, scan = PdqIndex(), PdqIndex(mih_min_rows=1 << 62)
        fill_ms = _fill(mih, m, args.variants)
        _fill(scan, m, args.variants)
        t = time.process_time()
        mih.search(m[0], 31)  # builds the chunk tables
        tables_ms = (time.process_time() - t) * 1000
        kinds = {f"planted at {d} bits": [_flip(m[rng.integers(n)], d, rng) for _ in range(per_kind)] for d in PLANTED}
        kinds["random"] = list(_random(rng, per_kind))
        all_s: list[float] = []
        all_m: list[float] = []
        for kind, qs in kinds.items():
            ts, rs, _ = _times(scan, qs, 31)
            tm, rm, vm = _times(mih, qs, 31)
            assert rs == rm, f"MIH and scan differ ({kind})"
            assert kind == "random" or all(r for r in rm), "a planted near-duplicate was not found"
            all_s += ts
            all_m += tm
            print(f"| {works:,} x {args.variants} | {kind} ({len(qs)}) | {_stat(ts)} | {_stat(tm)} |"
                  f" {np.median(tm) / np.median(ts):.3f} | {int(np.median(vm)):,} of {n:,} |")
        print(f"| {works:,} x {args.variants} | **all** ({len(all_s)}) | {_stat(all_s)} | {_stat(all_m)} |"
              f" **{np.median(all_m) / np.median(all_s):.3f}** | |")
        print(f"\n{works:,} works: add + compact {fill_ms:.0f} ms, chunk tables {tables_ms:.0f} ms (CPU)\n")

    n = len(scan)
    qs = [_flip(m[rng.integers(n)], 20, rng) for _ in range(per_kind)] + list(_random(rng, per_kind))
    forced = PdqIndex(mih_min_rows=0, mih_max_distance=255, mih_max_fraction=1.0)
    _fill(forced, m, args.variants)
    print(f"max_distance sweep at {n:,} rows, MIH forced ({len(qs)} queries: half planted at 20 bits, half random)\n")
    print("| max_distance | scan median ms | MIH median ms | ratio | rows verified (share) | NumPy scan (before) ms |")
    print("|---|---|---|---|---|---|")
    words = m.view(np.uint64).reshape(-1, 4)
    for r in (31, 40, 47, 48, 52, 56, 64, 72):
        ts, rs, _ = _times(scan, qs, r)
        tm, rm, vm = _times(forced, qs, r)
        assert rs == rm
        old = [_numpy_scan(words, q, r) for q in qs]
        assert all(sorted({w // args.variants for w in idx.tolist()}) == sorted(res)
                   for (_, idx), res in zip(old, rs, strict=True))
        print(f"| {r} | {np.median(ts):.3f} | {np.median(tm):.3f} | {np.median(tm) / np.median(ts):.3f} |"
              f" {np.median(vm) / n:.1%} | {np.median([o[0] for o in old]):.3f} |")

    print("\nrow-threshold sweep, max_distance 31, MIH forced\n")
    print("| rows | scan median ms | MIH median ms | ratio |")
    print("|---|---|---|---|")
    for rows in (r for r in (1024, 4096, 16384, 32768, 65536, 131072, 262144) if r <= n):
        sub = m[:rows]
        a, b = PdqIndex(mih_min_rows=0), PdqIndex(mih_min_rows=1 << 62)
        _fill(a, sub, args.variants)
        _fill(b, sub, args.variants)
        sq = [_flip(sub[rng.integers(rows)], 20, rng) for _ in range(per_kind)] + list(_random(rng, per_kind))
        a.search(sq[0], 31)
        ts, rs, _ = _times(b, sq, 31)
        tm, rm, _ = _times(a, sq, 31)
        assert rs == rm
        print(f"| {rows:,} | {np.median(ts):.3f} | {np.median(tm):.3f} | {np.median(tm) / np.median(ts):.3f} |")

    if args.layouts:
        q8 = m[rng.integers(0, n, 20)]
        t = time.process_time()
        for q in q8:
            d = np.bitwise_count(m ^ q).sum(axis=1)
            {int(i) // args.variants for i in np.flatnonzero(d <= 31)}
        rows_ms = (time.process_time() - t) / 20 * 1000
        t = time.process_time()
        for q in q8:
            scan.search(q, 31)
        words_ms = (time.process_time() - t) / 20 * 1000
        print(f"\n{n} hashes: uint8 rows {rows_ms:.2f} ms/query, uint64 scan {words_ms:.2f} ms/query,"
              f" ratio {words_ms / rows_ms:.2f}")


if __name__ == "__main__":
    main()
