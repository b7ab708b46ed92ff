"""Cost of filling a PdqIndex the way the engine rebuilds it: one add() per work, then len().

    git show a6e21d0:matching/index/pdq.py > /tmp/pdq_before.py
    python bench/index_pdq_fill.py --works 5000 20000 --baseline /tmp/pdq_before.py

Random hashes, 8 per work; CPU ms for the add loop plus the compaction, for this tree's
PdqIndex and (with ``--baseline``) the PdqIndex class of another copy of the module.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from matching.index.pdq import PdqIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--works", type=int, nargs="+", default=[5_000, 20_000])
    ap.add_argument("--baseline", help="path of another matching/index/pdq.py to time alongside")
    args = ap.parse_args()
    classes: dict[str, type] = {"this tree": PdqIndex}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("pdq_baseline", args.baseline)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        classes = {"baseline": mod.PdqIndex, **classes}
    rng = np.random.default_rng(0)
    for works in args.works:
        m = np.packbits(rng.integers(0, 2, (works * 8, 256), dtype=np.uint8), axis=1)
        for name, cls in classes.items():
            ix = cls()
            t = time.process_time()
            for w in range(works):
                ix.add(w, w % 20, m[w * 8 : (w + 1) * 8])
            len(ix)
            print(f"{works:,} works, {name}: add + compact {(time.process_time() - t) * 1000:.0f} ms CPU")


if __name__ == "__main__":
    main()
