"""CPU per upload by stage with the copy-detection descriptor on, against the same run without it (issue 18).

    ARTWATCH_DATA_DIR=/work/benchruns/dev/data python bench/descriptor_cost.py \\
        --dataset /work/benchdev/dev --out /work/benchruns/dev/descriptor_cost.json [--every N] [--procs 2]

Builds the engine of the data dir's settings (the default configuration, as
``artwatch scan``: local features, PDQ and the descriptor) in each of
``--procs`` processes and times, per upload, in CPU seconds: decode, the
local-feature stages and PDQ (``Engine.analyse_decoded``), the descriptor on
the whole upload (``Engine.descriptor_candidates``), the descriptor on the
regions of open decisions (``Engine.describe_regions``) and scoring. ``total``
is all of them; ``without descriptor`` is the same upload's total less the two
descriptor stages, which is what ``--no-embedder`` runs. Both come from one run
over the same uploads, so machine load hits them alike. Prints and writes the
median and p95 of each, the ratio of the medians and how many uploads had a
region described.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import load_settings
from matching import build_engine
from matching.decode import decode_image
from matching.engine import UPLOAD_MAX_SIDE, Engine
from matching.features import limit_native_threads

_engine: Engine | None = None


def _init() -> None:
    global _engine  # noqa: PLW0603 (one engine per pool process)
    limit_native_threads()
    _engine = build_engine(load_settings())
    if not _engine.has_descriptor:
        raise SystemExit("the data dir's settings have no descriptor (matching.descriptor)")


def _analyse(path: str) -> dict[str, float]:
    assert _engine is not None
    clock = time.process_time
    t0 = clock()
    img = decode_image(Path(path).read_bytes(), name=path, max_side=UPLOAD_MAX_SIDE)
    t1 = clock()
    timings: dict[str, float] = {"decode": t1 - t0}
    a = _engine.analyse_decoded(img, timings=timings)
    t2 = clock()
    a.sscd = _engine.descriptor_candidates(img)
    t3 = clock()
    regions = _engine.describe_regions(img, a)
    t4 = clock()
    _engine.score(a, img)
    t5 = clock()
    timings.update(descriptor=t3 - t2, regions=t4 - t3, score=t5 - t4, total=t5 - t0)
    timings["without descriptor"] = timings["total"] - timings["descriptor"] - timings["regions"]
    timings["_regions"] = float(regions)
    return timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    ups = [json.loads(ln) for ln in (args.dataset / "uploads.jsonl").read_text().splitlines() if ln]
    paths = [str(args.dataset / u["file"]) for u in ups[:: args.every]]
    t = time.time()
    all_t: dict[str, list[float]] = {}
    with mp.get_context("fork").Pool(args.procs, _init) as pool:
        for n, tm in enumerate(pool.imap_unordered(_analyse, paths, chunksize=4), 1):
            for k, v in tm.items():
                all_t.setdefault(k, []).append(v if k.startswith("_") else v * 1000)
            if n % 250 == 0:
                print(f"analysed {n}/{len(paths)} ({time.time() - t:.0f}s)", file=sys.stderr)
    regions = all_t.pop("_regions")
    stats: dict[str, Any] = {k: {"median_ms": round(float(np.median(v)), 2),
                                 "p95_ms": round(float(np.percentile(v, 95)), 2)} for k, v in all_t.items()}
    stats["ratio of medians"] = round(stats["total"]["median_ms"] / stats["without descriptor"]["median_ms"], 3)
    stats["_meta"] = {"uploads": len(paths), "uploads with a region described": sum(1 for r in regions if r),
                      "regions described": int(sum(regions)), "wall_s": round(time.time() - t, 1),
                      "procs": args.procs}
    args.out.write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
