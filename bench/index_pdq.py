"""PDQ lookup cost: (n, 32) uint8 rows vs PdqIndex's (n, 4) uint64 words.

    python bench/index_pdq.py --works 10000 --variants 16 --queries 20

Both scans run over the same random hashes in one process; CPU ms per query.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from matching.index.pdq import PdqIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--works", type=int, default=10_000)
    ap.add_argument("--variants", type=int, default=16)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.works * args.variants
    m = np.packbits(rng.integers(0, 2, (n, 256), dtype=np.uint8), axis=1)
    ix = PdqIndex()
    for w in range(args.works):
        ix.add(w, w % 20, m[w * args.variants : (w + 1) * args.variants])
    len(ix)
    qs = m[rng.integers(0, n, args.queries)]
    t = time.process_time()
    for q in qs:
        d = np.bitwise_count(m ^ q).sum(axis=1)
        {int(i) // args.variants for i in np.flatnonzero(d <= 31)}
    rows = (time.process_time() - t) / args.queries * 1000
    t = time.process_time()
    for q in qs:
        ix.search(q, 31)
    words = (time.process_time() - t) / args.queries * 1000
    print(f"{n} hashes: uint8 rows {rows:.2f} ms/query, PdqIndex {words:.2f} ms/query, ratio {words / rows:.2f}")


if __name__ == "__main__":
    main()
