"""Which of the 200 real works' matches a larger registry loses, and which
query-side settings bring them back (issue 19).

    python bench/lost_matches.py --from /work/benchruns/dev/data --big /work/benchruns/scale/10000 \\
        --dataset /work/benchdev/dev --uploads 1000 --variant '{}' --variant '{"n_sub": 3}' \\
        --variant '{"top": 96}' --variant '{"mask_synthetic": true}'

Both engines (as ``registry_scale.py`` builds them: embedder and descriptor
off) live in this process; every upload is analysed by the 200-work engine
once and by the large one under each ``--variant``, a JSON object of
``n_sub`` (sub-words a query keypoint visits), ``top`` (images voted into
verification), ``verify_top`` (images verified), ``cap``
(``matching.postings.HITS_PER_KEYPOINT``) and ``mask_synthetic`` (only the real
works' images searchable: the same vocabulary and postings, without the
synthetic works' competition). ``--files`` limits the run to those uploads
(paths relative to the dataset). Prints, per variant, the matches kept, lost
(and how many of those are not even a candidate), new ones to real works, and
any to a synthetic work; then the lost ones of the first variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry_scale import _engine


def _scores(engine: Any, data: bytes) -> dict[int, tuple[float, bool]]:
    return {c.work_id: (c.score, c.match) for c in engine.analyse(data, name="upload.jpg")}


def main() -> None:
    import matching.postings as postings
    from matching.features import limit_native_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", type=Path, required=True, help="data dir holding the 200 registered works")
    ap.add_argument("--big", type=Path, required=True, help="a registry built and retrained by registry_scale.py")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--uploads", type=int, default=1000, help="the dataset's first N uploads")
    ap.add_argument("--files", nargs="*", default=None)
    ap.add_argument("--variant", action="append", default=None, help="JSON object (see the module doc)")
    args = ap.parse_args()
    limit_native_threads()
    rows = [json.loads(ln) for ln in (args.dataset / "uploads.jsonl").read_text().splitlines() if ln.strip()]
    files = args.files if args.files is not None else [r["file"] for r in rows[: args.uploads]]
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    small, big = _engine(str(args.src)), _engine(str(args.big))
    n_real = len(small.index.work_ids)
    ix = big.index
    alive = ix._alive.copy()
    real = np.array([i.work_id <= n_real for i in ix._images])
    defaults = (ix.n_sub, big.search_top, big.verify_top, postings.HITS_PER_KEYPOINT)
    Scores = dict[int, tuple[float, bool]]
    results: list[list[tuple[str, Scores, Scores]]] = [[] for _ in variants]
    for i, f in enumerate(files):
        data = (args.dataset / f).read_bytes()
        at_small = _scores(small, data)
        for k, v in enumerate(variants):
            ix.n_sub = int(v.get("n_sub", defaults[0]))
            big.search_top = int(v.get("top", defaults[1]))
            big.verify_top = int(v.get("verify_top", defaults[2]))
            postings.HITS_PER_KEYPOINT = int(v.get("cap", defaults[3]))
            ix._alive = alive & real if v.get("mask_synthetic") else alive
            results[k].append((f, at_small, _scores(big, data)))
        if i % 100 == 99:
            print(f"{i + 1}/{len(files)} uploads", file=sys.stderr, flush=True)
    for k, v in enumerate(variants):
        kept = lost = absent = new = synthetic = 0
        lost_rows = []
        for f, a, b in results[k]:
            ma = {w for w, (_, m) in a.items() if m}
            mb = {w for w, (_, m) in b.items() if m}
            kept += len(ma & mb)
            lost += len(ma - mb)
            absent += sum(w not in b for w in ma - mb)
            new += sum(1 for w in mb - ma if w <= n_real)
            synthetic += sum(1 for w in mb if w > n_real)
            lost_rows += [(f, w, round(a[w][0], 3), round(b[w][0], 3) if w in b else None) for w in sorted(ma - mb)]
        print(f"{json.dumps(v)}: matches at {n_real} works {kept + lost}, kept {kept}, lost {lost} "
              f"({absent} not a candidate), new to real works {new}, to synthetic works {synthetic}")
        if k == 0:
            for row in lost_rows:
                print(f"    lost: {row[0]} work {row[1]}: score {row[2]} at {n_real} works, {row[3]} now")


if __name__ == "__main__":
    main()
