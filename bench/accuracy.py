"""Drive the matching engine over a benchmark dataset and write predictions.

    python bench/accuracy.py DATASET DATA_DIR --preds preds.jsonl [--every N] [--procs 2]

Registers ``DATASET/works.jsonl`` (external ids mapped to ints in file
order, owners likewise) into a fresh engine under DATA_DIR, analyses the
uploads of ``uploads.jsonl`` (every N-th when subsampling) in ``--procs``
processes, and writes the predictions format of the benchmark README. It
never reads ``truth.jsonl``: score with ``score.py``. Per-stage CPU times go
to ``PREDS.timings.json``.
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

from matching.decode import decode_image
from matching.engine import UPLOAD_MAX_SIDE, Engine, WorkRef
from matching.features import StoredWork, limit_native_threads

_engine: Engine | None = None


def _init(data_dir: str, threshold: float) -> None:
    global _engine
    limit_native_threads()
    _engine = Engine(Path(data_dir), default_threshold=threshold)


def _prepare(args: tuple[int, int, str, str]) -> StoredWork:
    wid, owner, kind, path = args
    assert _engine is not None
    return _engine.prepare(WorkRef(wid, owner, kind), Path(path).read_bytes())


def _analyse(args: tuple[str, str]) -> tuple[str, list[dict[str, Any]], dict[str, float]]:
    uid, path = args
    assert _engine is not None
    t0 = time.process_time()
    data = Path(path).read_bytes()
    img = decode_image(data, name=path, max_side=UPLOAD_MAX_SIDE)
    t1 = time.process_time()
    timings: dict[str, float] = {"decode": t1 - t0}
    a = _engine.analyse_decoded(img, timings=timings)
    cands = _engine.score(a, img)
    timings["total"] = time.process_time() - t0
    return uid, [{"work": c.work_id, "score": c.score, "match": c.match, "signals": c.signals}
                 for c in cands], timings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--preds", type=Path, required=True)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--skip-register", action="store_true")
    ap.add_argument("--calibrate", type=float, default=None, metavar="PRECISION",
                    help="run matching.calibrate for this target precision before analysing")
    args = ap.parse_args()

    works = [json.loads(ln) for ln in (args.dataset / "works.jsonl").read_text().splitlines() if ln]
    wid_of = {w["id"]: i + 1 for i, w in enumerate(works)}
    ext_of = {v: k for k, v in wid_of.items()}
    owners = sorted({w["owner"] for w in works})
    oid_of = {o: i + 1 for i, o in enumerate(owners)}
    ctx = mp.get_context("fork")
    init = (str(args.data_dir), args.threshold)
    if not args.skip_register:
        t = time.time()
        jobs = [(wid_of[w["id"]], oid_of[w["owner"]], w["kind"], str(args.dataset / w["file"]))
                for w in works]
        _init(*init)
        assert _engine is not None
        with ctx.Pool(args.procs, _init, init) as pool:
            for n, stored in enumerate(pool.imap(_prepare, jobs, chunksize=2), 1):
                _engine.add_prepared(stored)
                if n % 50 == 0:
                    print(f"registered {n}/{len(jobs)} ({time.time() - t:.0f}s)", file=sys.stderr)
        _engine.retrain()
        print(f"registered {len(jobs)} works in {time.time() - t:.0f}s", file=sys.stderr)

    if args.calibrate is not None:
        from matching.calibrate import calibrate

        _init(*init)
        assert _engine is not None
        t = time.time()
        refs = [(WorkRef(wid_of[w["id"]], oid_of[w["owner"]], w["kind"]),
                 (args.dataset / w["file"]).read_bytes()) for w in works]
        cal = calibrate(_engine, refs, args.calibrate)
        print(f"calibrated in {time.time() - t:.0f}s: {json.dumps(cal.to_json())}", file=sys.stderr)

    ups = [json.loads(ln) for ln in (args.dataset / "uploads.jsonl").read_text().splitlines() if ln]
    ups = ups[:: args.every]
    jobs2 = [(u["id"], str(args.dataset / u["file"])) for u in ups]
    t = time.time()
    all_t: dict[str, list[float]] = {}
    with ctx.Pool(args.procs, _init, init) as pool, open(args.preds, "w") as out:
        for n, (uid, cands, tm) in enumerate(pool.imap_unordered(_analyse, jobs2, chunksize=4), 1):
            out.writelines(json.dumps({"upload": uid, "work": ext_of[c["work"]], "score": c["score"],
                                      "match": c["match"], "signals": c["signals"]}) + "\n" for c in cands)
            for k, v in tm.items():
                all_t.setdefault(k, []).append(v * 1000)
            if n % 250 == 0:
                print(f"analysed {n}/{len(jobs2)} ({time.time() - t:.0f}s)", file=sys.stderr)
    stats = {k: {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95))}
             for k, v in all_t.items()}
    stats["_meta"] = {"uploads": len(jobs2), "wall_s": time.time() - t, "procs": args.procs}
    Path(str(args.preds) + ".timings.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
