"""Where the candidate search's CPU goes, by part, on one or more registries.

    python bench/search_profile.py --dataset /work/benchdev/dev --uploads 100 \\
        /work/benchruns/dev/data /work/benchruns/scale/10000

Each data dir is opened as a worker opens it (``registry_scale._engine``: the
embedder and the descriptor off) in a process of its own, one after the other.
Every sampled dev upload is decoded and described once; then
``Postings.search`` runs on its features with its parts timed
(``time.process_time``) by wrapping the functions it calls: ``assign`` (words
and signatures of the upload's descriptors), ``hamming_hits`` (the postings
walk), ``distinct_best`` and the rest (votes, ranking, gathering the
candidates' correspondences). Also counted: postings visited and hits kept per
upload. Prints one JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry_scale import _engine
from speed_matching import _pct, _sample_uploads

PARTS = ("assign", "hamming_hits", "distinct_best", "rest", "search")


def _child(data_dir: str, paths: list[str], repeat: int, code: str, out: Any) -> None:
    if code:
        sys.path.insert(0, code)
    import matching.postings as postings
    from matching.decode import decode_image
    from matching.engine import UPLOAD_MAX_SIDE
    from matching.features import extract_features
    from matching.vocabulary import Vocabulary

    engine = _engine(data_dir)
    index = engine.index
    clock = time.process_time
    spent: dict[str, float] = {}
    counts: dict[str, int] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + clock() - t

        return wrapper

    orig_hits = postings.hamming_hits

    def hits(offsets: Any, *a: Any) -> Any:
        # (offsets, runs, sig, words, ...) since postings are 16 bytes; (offsets, sig, words, ...) before
        words = a[2] if len(a) == 9 else a[1]
        w = words.astype(np.int64)
        counts["visited"] = counts.get("visited", 0) + int((offsets[w + 1] - offsets[w]).sum())
        r = orig_hits(offsets, *a)
        counts["hits"] = counts.get("hits", 0) + int(r[0].shape[0])
        return r

    postings.hamming_hits = timed("hamming_hits", hits)  # type: ignore[assignment]
    postings.distinct_best = timed("distinct_best", postings.distinct_best)  # type: ignore[assignment]
    Vocabulary.assign = timed("assign", Vocabulary.assign)  # type: ignore[method-assign]
    feats = []
    for p in paths:
        img = decode_image(Path(p).read_bytes(), name=Path(p).name, max_side=UPLOAD_MAX_SIDE)
        feats.append(extract_features(np.asarray(img.rgb), balanced=True))
    for q in feats[:5]:  # warm-up: compiled loops, first page touches
        engine._local_candidates(q, None, None)
    rows: dict[str, list[float]] = {k: [] for k in (*PARTS, "visited", "hits")}
    found = []
    for q in feats:
        best = None
        for _ in range(repeat):
            spent.clear()
            counts.clear()
            t = clock()
            res = engine._local_candidates(q, None, None)
            spent["search"] = clock() - t
            if best is None or spent["search"] < best["search"]:
                best = dict(spent) | {k: float(v) for k, v in counts.items()}
        assert best is not None
        best["rest"] = best["search"] - sum(best.get(k, 0.0) for k in PARTS[:3])
        for k in PARTS:
            rows[k].append(best.get(k, 0.0) * 1000)
        rows["visited"].append(best.get("visited", 0.0))
        rows["hits"].append(best.get("hits", 0.0))
        found.append([(c.work_id, c.mirrored, c.q_xy.shape[0]) for c in res])
    code_dir = str(Path(postings.__file__).parents[1])
    out.put({"works": len(index.work_ids), "rows": rows, "found": found, "code": code_dir})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dirs", nargs="+", type=Path)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1, help="searches per upload; the fastest counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--base",
        default="",
        help="a checkout of other code (a git worktree): every registry is "
        "searched by it too, right after this checkout's code, and the candidates compared",
    )
    args = ap.parse_args()
    paths = [str(p) for p in _sample_uploads(args.dataset, args.uploads, args.seed)]
    ctx = mp.get_context("spawn")
    result: dict[str, Any] = {}
    for d in args.data_dirs:
        for code in ("", args.base) if args.base else ("",):
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(str(d), paths, args.repeat, code, q))
            p.start()
            got = q.get()
            p.join()
            result[f"{d} ({'base' if code else 'this checkout'})"] = got
    print(
        json.dumps(
            {
                k: {
                    "works": v["works"],
                    **{
                        part: {"median": round(statistics.median(x), 3), "p95": round(_pct(x, 0.95), 3)}
                        for part, x in v["rows"].items()
                    },
                }
                for k, v in result.items()
            },
            indent=1,
        )
    )
    print("\n| registry | works | " + " | ".join(PARTS) + " | postings visited | hits |")
    print("|---" * (len(PARTS) + 4) + "|")
    for k, v in result.items():
        med = {part: statistics.median(x) for part, x in v["rows"].items()}
        print(
            f"| {k} | {v['works']:,} | "
            + " | ".join(f"{med[p]:.2f}" for p in PARTS)
            + f" | {med['visited']:,.0f} | {med['hits']:,.0f} |"
        )
    if args.base:
        for d in args.data_dirs:
            a, b = result[f"{d} (this checkout)"], result[f"{d} (base)"]
            same = sum(x == y for x, y in zip(a["found"], b["found"], strict=True))
            for i, (x, y) in enumerate(zip(a["found"], b["found"], strict=True)):
                if x != y:
                    print(f"upload {paths[i]}: {len(x)} vs {len(y)} candidates, "
                          f"{'the same ones in another order' if sorted(x) == sorted(y) else 'other ones'}: "
                          f"only here {sorted(set(x) - set(y))}, only in base {sorted(set(y) - set(x))}")
            print(f"\n{d}: the same candidates for {same} of {len(paths)} uploads ({a['code']} vs {b['code']})")


if __name__ == "__main__":
    main()
