"""CPU cost per upload of each matching stage, at 200 and 10,000 registered works.

    python bench/speed_matching.py --dataset /work/benchdata/dev --uploads 300

Each registry runs in a process with one OpenCV thread (``build_engine`` sets
it; ``scan`` runs one such process per core), CLIP off (``--no-embedder``
configuration). Stages, each timed with ``time.process_time`` per upload:

- ``decode``: :func:`matching.decode_image` at the engine's upload size;
- ``sha256``, ``pdq``: the two cheap signals (:mod:`matching.signals`);
- ``features``, ``search``, ``verify``, ``pdq_search``: the stages of
  :meth:`Engine.analyse_decoded` (local features, inverted-file candidate
  search, geometric verification, PDQ lookup over all dihedral variants);
- ``total``: :meth:`Engine.analyse` on the bytes (what workers and ``scan``
  call), plus ``sha256``;
- side by side on the same decoded uploads: ``imagehash.phash`` and PDQ-only
  (hash + lookup).

The registry first holds the dataset's 200 works (registered normally). It is
then grown to ``--grow-to`` works with synthetic works: each copies a real
work's keypoint geometry and takes descriptors sampled from the whole pool of
real descriptors (so they land in the vocabulary's words like real ones and
compete for votes), and gets 16 random PDQ hashes. They are inserted straight
into a second engine's in-memory index (no disk), which is what a search
reads. Each engine lives in a process of its own, as in a worker that holds
one registry (in one shared process, the 10,000-work engine slowed even the
small engine's feature extraction by half); the two are measured upload by
upload, alternately, one at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ["decode", "sha256", "pdq", "features", "search", "verify", "pdq_search", "total"]


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


def _load_works(dataset: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (dataset / "works.jsonl").read_text().splitlines() if line.strip()]


def _sample_uploads(dataset: Path, n: int, seed: int) -> list[Path]:
    rows = [json.loads(line) for line in (dataset / "uploads.jsonl").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [dataset / rows[i]["file"] for i in sorted(pick)]


def _measure(engine: Any, uploads: list[bytes], names: list[str]) -> dict[str, list[float]]:
    import imagehash
    from PIL import Image

    from matching.decode import decode_image
    from matching.engine import UPLOAD_MAX_SIDE
    from matching.signals import PdqSignal, Probe, Sha256Signal

    clock = time.process_time
    sha, pdq = Sha256Signal(), PdqSignal()
    out: dict[str, list[float]] = {k: [] for k in [*STAGES, "phash", "pdq_only"]}
    for data, name in zip(uploads, names, strict=True):
        t0 = clock()
        img = decode_image(data, name=name, max_side=UPLOAD_MAX_SIDE)
        t1 = clock()
        sha.compute(Probe(data, img))
        t2 = clock()
        pdq.compute(Probe(data, img))
        t3 = clock()
        timings: dict[str, float] = {}
        engine.analyse_decoded(img, timings=timings)
        t4 = clock()
        hashlib.sha256(data).digest()
        engine.analyse(data, name=name)
        t5 = clock()
        imagehash.phash(Image.fromarray(img.rgb))
        t6 = clock()
        engine._pdq_search(np.asarray(img.rgb), None)  # PDQ-only: hash + lookup
        t7 = clock()
        out["decode"].append((t1 - t0) * 1000)
        out["sha256"].append((t2 - t1) * 1000)
        out["pdq"].append((t3 - t2) * 1000)
        for k, key in (("features", "features"), ("search", "search"), ("verify", "verify"),
                       ("pdq_search", "pdq")):
            out[k].append(timings.get(key, 0.0) * 1000)
        out["total"].append((t5 - t4) * 1000)
        out["phash"].append((t6 - t5) * 1000)
        out["pdq_only"].append((t7 - t6) * 1000)
    return out


def _grow(engine: Any, target: int, seed: int) -> int:
    """Add synthetic works (see the module doc) until the registry holds ``target``."""
    from matching.local import LocalFeatures, StoredWork

    idx = engine.index
    # The index keeps postings in memory; descriptors are read from the store.
    real = [idx.store.read(w) for w in idx.work_ids]
    real = [w for w in real if w is not None]
    pool = np.concatenate([f.desc for w in real for f in (w.direct, w.mirrored) if len(f)])
    rng = np.random.default_rng(seed)
    next_id = max(w.work_id for w in real) + 1
    added = 0
    while len(real) + added < target:
        src = real[int(rng.integers(len(real)))]
        feats = []
        for f in (src.direct, src.mirrored):
            desc = pool[rng.integers(0, pool.shape[0], len(f))]
            feats.append(LocalFeatures(f.xy, f.scale, f.angle, desc, f.width, f.height))
        pdq = np.packbits(rng.integers(0, 2, (16, 256), dtype=np.uint8), axis=1)
        idx._insert(StoredWork(next_id, 1000 + next_id % 20, src.kind, src.width, src.height,
                               feats[0], feats[1], pdq))
        next_id += 1
        added += 1
    idx._compact()
    return added


def _summary(ms: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"median": round(statistics.median(v), 2), "p95": round(_pct(v, 0.95), 2)} for k, v in ms.items()}


def _engine_process(conn: Any, role: str, dataset: str, data_dir: str, grow_to: int, seed: int,
                    paths: list[str]) -> None:
    """One registry in a process of its own; measures the uploads it is sent.

    ``role`` "small" registers the dataset's works; "big" opens the same folder
    once they are there and grows the registry in memory (:func:`_grow`).
    """
    from config.settings import load_settings
    from matching import WorkRef, build_engine

    settings = load_settings(data_dir=Path(data_dir), matching={"use_embedder": False})
    engine = build_engine(settings)
    ds = Path(dataset)
    if role == "small":
        works = _load_works(ds)
        t = time.perf_counter()
        for i, w in enumerate(works, 1):
            engine.register(WorkRef(work_id=i, owner_id=int(w["owner"].lstrip("o")), kind=w["kind"]),
                            (ds / w["file"]).read_bytes())
        engine.retrain()
        print(f"registered {len(works)} works in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    else:
        engine.index.refresh()
        t = time.perf_counter()
        added = _grow(engine, grow_to, seed)
        print(f"added {added} synthetic works in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    data = [Path(p).read_bytes() for p in paths]
    names = [Path(p).name for p in paths]
    _measure(engine, data[:10], names[:10])  # warm-up: imports, compiled loops, vocabulary segments
    conn.send(len(engine.index.work_ids))
    while (i := conn.recv()) is not None:
        conn.send(_measure(engine, data[i : i + 1], names[i : i + 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("/work/benchdata/dev"))
    ap.add_argument("--uploads", type=int, default=300)
    ap.add_argument("--grow-to", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import multiprocessing as mp

    tmp = Path(tempfile.mkdtemp(prefix="speedbench-"))
    paths = [str(p) for p in _sample_uploads(args.dataset, args.uploads, args.seed)]
    ctx = mp.get_context("spawn")
    procs, conns, sizes = [], [], []
    # The small registry is built first; the big one starts from its folder.
    for role in ("small", "big"):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_engine_process, args=(theirs, role, str(args.dataset), str(tmp),
                                                       args.grow_to, args.seed, paths))
        p.start()
        procs.append(p)
        conns.append(mine)
        sizes.append(mine.recv())
    small: dict[str, list[float]] = {}
    big: dict[str, list[float]] = {}
    # One process measures at a time, alternately, so machine load (this box is
    # shared) and drift weigh on both sides alike.
    for i in range(len(paths)):
        order = ((conns[0], small), (conns[1], big)) if i % 2 == 0 else ((conns[1], big), (conns[0], small))
        for conn, acc in order:
            conn.send(i)
            for k, v in conn.recv().items():
                acc.setdefault(k, []).extend(v)
    for conn, p in zip(conns, procs, strict=True):
        conn.send(None)
        p.join()
    n_small, n_big = sizes
    results: dict[str, Any] = {"uploads": len(paths), str(n_small): _summary(small), str(n_big): _summary(big)}

    def med(d: dict[str, list[float]], k: str) -> float:
        return statistics.median(d[k])

    cand_small = [a + b for a, b in zip(small["search"], small["pdq_search"], strict=True)]
    cand_big = [a + b for a, b in zip(big["search"], big["pdq_search"], strict=True)]
    results["growth"] = {
        "candidate_search_median_ratio": round(statistics.median(cand_big) / statistics.median(cand_small), 2),
        "total_median_ratio": round(med(big, "total") / med(small, "total"), 2),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\n| stage (CPU ms per upload) | {n_small} works median | p95 | {n_big} works median | p95 |")
    print("|---|---|---|---|---|")
    for k in [*STAGES, "phash", "pdq_only"]:
        a, b = results[str(n_small)][k], results[str(n_big)][k]
        print(f"| {k} | {a['median']} | {a['p95']} | {b['median']} | {b['p95']} |")
    for n, d in ((n_small, small), (n_big, big)):
        print(f"{n} works: total / decode (medians) = {med(d, 'total') / med(d, 'decode'):.1f}x")
    print(f"candidate search (search + pdq_search) median growth {n_small} -> {n_big}: "
          f"{results['growth']['candidate_search_median_ratio']}x; total: {results['growth']['total_median_ratio']}x")


if __name__ == "__main__":
    main()
