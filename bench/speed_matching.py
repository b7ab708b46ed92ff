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

``--allocators system,jemalloc`` runs a small and a big registry process for
each allocator (jemalloc preloaded with ``LD_PRELOAD``), all four measured in
turn upload by upload, and reports each allocator's tables and the ratio
between them at each size.
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


def _measure(engine: Any, uploads: list[bytes], names: list[str]) -> dict[str, list[Any]]:
    import imagehash
    from PIL import Image

    from matching.decode import decode_image
    from matching.engine import UPLOAD_MAX_SIDE
    from matching.signals import PdqSignal, Probe, Sha256Signal

    clock = time.process_time
    sha, pdq = Sha256Signal(), PdqSignal()
    out: dict[str, list[Any]] = {k: [] for k in [*STAGES, "phash", "pdq_only", "matched"]}
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
        found = engine.analyse(data, name=name)
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
        out["matched"].append(sorted(c.work_id for c in found if c.match))
    return out


def _grow(engine: Any, target: int, seed: int) -> int:
    """Add synthetic works (see the module doc) until the registry holds ``target``."""
    from matching.replica import SUB_SAMPLE_PER_WORK

    idx = engine.index
    # The index keeps postings in memory; descriptors are read from the store.
    real = [idx.store.read(w) for w in idx.work_ids]
    real = [w for w in real if w is not None]
    pool = np.concatenate([f.desc for w in real for f in (w.direct, w.mirrored) if len(f)])
    rng = np.random.default_rng(seed)
    # What a retrain at this size does (LocalIndex.retrain): sub-words trained on a
    # sample of the registry's descriptors, here drawn as the synthetic works draw theirs.
    postings = sum(len(f) for w in real for f in (w.direct, w.mirrored)) * target / len(real)
    sample = pool[rng.integers(0, pool.shape[0], SUB_SAMPLE_PER_WORK * target)]
    vocab = idx.vocab.with_sublevel(sample, int(postings))
    del sample
    if vocab is not idx.vocab:
        idx._reload_all(vocab)
    print(f"vocabulary: {vocab.size // vocab.k3} words x {vocab.k3} sub-words", file=sys.stderr)
    added = 0
    for work in synthetic_works(real, pool, target - len(real), rng):
        idx._insert(work)
        added += 1
    idx._compact()
    return added


def synthetic_works(real: list[Any], pool: np.ndarray, n: int, rng: np.random.Generator, *,
                    cells: bool = False) -> Any:
    """``n`` synthetic works (see the module doc), numbered after the real ones.

    Their descriptors are rows of ``pool``, so every real descriptor has exact
    copies in the synthetic works (about 50 at 10,000 works, 500 at 100,000),
    and each synthetic work shares about 20 exact descriptors with each real
    one. With ``cells`` each descriptor is instead put together from 16 rows:
    SIFT's 4 x 4 spatial cells of 8 orientation bins each, cell i from row i's
    cell i, so each cell is a real histogram and no descriptor is a copy."""
    from matching.features import LocalFeatures, StoredWork

    next_id = max(w.work_id for w in real) + 1
    for _ in range(n):
        src = real[int(rng.integers(len(real)))]
        feats = []
        for f in (src.direct, src.mirrored):
            if cells:
                rows = rng.integers(0, pool.shape[0], (len(f), 16))
                desc = pool.reshape(-1, 16, 8)[rows, np.arange(16)].reshape(len(f), 128)
            else:
                desc = pool[rng.integers(0, pool.shape[0], len(f))]
            feats.append(LocalFeatures(f.xy, f.scale, f.angle, desc, f.width, f.height))
        pdq = np.packbits(rng.integers(0, 2, (16, 256), dtype=np.uint8), axis=1)
        yield StoredWork(next_id, 1000 + next_id % 20, src.kind, src.width, src.height, feats[0], feats[1], pdq)
        next_id += 1


def _summary(ms: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"median": round(statistics.median(v), 2), "p95": round(_pct(v, 0.95), 2)} for k, v in ms.items()}


def _engine_process(conn: Any, role: str, dataset: str, data_dir: str, grow_to: int, seed: int,
                    paths: list[str]) -> None:
    """One registry in a process of its own; measures the uploads it is sent.

    ``role`` "small" registers the dataset's works; "open" opens the same folder
    once they are there; "big" opens it and grows the registry in memory
    (:func:`_grow`).
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
    elif role == "open":
        engine.index.refresh()
    else:
        engine.index.refresh()
        t = time.perf_counter()
        added = _grow(engine, grow_to, seed)
        print(f"added {added} synthetic works in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    with open("/proc/self/maps", encoding="utf-8") as fh:
        malloc = "jemalloc" if any("libjemalloc" in ln for ln in fh) else "system"
    print(f"{role} registry, {malloc} malloc: {len(engine.index.work_ids)} works", file=sys.stderr)
    data = [Path(p).read_bytes() for p in paths]
    names = [Path(p).name for p in paths]
    _measure(engine, data[:10], names[:10])  # warm-up: imports, compiled loops, vocabulary segments
    conn.send(len(engine.index.work_ids))
    while (i := conn.recv()) is not None:
        conn.send(_measure(engine, data[i : i + 1], names[i : i + 1]))


ALLOCATORS = {"system": None, "jemalloc": "libjemalloc.so.2"}


def _start(
    ctx: Any, role: str, allocator: str, args: argparse.Namespace, tmp: Path, paths: list[str]
) -> tuple[Any, Any]:
    """Start one engine process with ``allocator`` preloaded (the environment is read at spawn)."""
    import os

    mine, theirs = ctx.Pipe()
    before = os.environ.get("LD_PRELOAD")
    lib = ALLOCATORS[allocator]
    if lib:
        os.environ["LD_PRELOAD"] = lib
    try:
        p = ctx.Process(target=_engine_process, args=(theirs, role, str(args.dataset), str(tmp),
                                                       args.grow_to, args.seed, paths))
        p.start()
    finally:
        if before is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = before
    return p, mine


def _report(n_small: int, n_big: int, small: dict[str, list[Any]], big: dict[str, list[Any]],
            label: str) -> dict[str, Any]:
    # Accuracy at scale: the small registry's matches (all to real works) that the
    # big one still makes, and the big one's matches to its synthetic works.
    matched_small, matched_big = small.pop("matched"), big.pop("matched")
    kept = sum(len(set(a) & set(b)) for a, b in zip(matched_small, matched_big, strict=True))
    total_small = sum(len(a) for a in matched_small)
    synthetic = sum(1 for b in matched_big for w in b if w > n_small)
    results: dict[str, Any] = {str(n_small): _summary(small), str(n_big): _summary(big),
                               "matches": {"small": total_small, "kept_by_big": kept,
                                           "big_to_synthetic_works": synthetic}}

    def med(d: dict[str, list[float]], k: str) -> float:
        return statistics.median(d[k])

    cand_small = [a + b for a, b in zip(small["search"], small["pdq_search"], strict=True)]
    cand_big = [a + b for a, b in zip(big["search"], big["pdq_search"], strict=True)]
    results["growth"] = {
        "candidate_search_median_ratio": round(statistics.median(cand_big) / statistics.median(cand_small), 2),
        "total_median_ratio": round(med(big, "total") / med(small, "total"), 2),
    }
    print(f"\n{label}\n")
    print(f"| stage (CPU ms per upload) | {n_small} works median | p95 | {n_big} works median | p95 |")
    print("|---|---|---|---|---|")
    for k in [*STAGES, "phash", "pdq_only"]:
        a, b = results[str(n_small)][k], results[str(n_big)][k]
        print(f"| {k} | {a['median']} | {a['p95']} | {b['median']} | {b['p95']} |")
    for n, d in ((n_small, small), (n_big, big)):
        print(f"{n} works: total / decode (medians) = {med(d, 'total') / med(d, 'decode'):.1f}x")
    print(f"matches at {n_small} works: {total_small}; kept at {n_big} works: {kept}; "
          f"matches to synthetic works at {n_big}: {synthetic}")
    print(f"candidate search (search + pdq_search) median growth {n_small} -> {n_big}: "
          f"{results['growth']['candidate_search_median_ratio']}x; total: {results['growth']['total_median_ratio']}x")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("/work/benchdata/dev"))
    ap.add_argument("--uploads", type=int, default=300)
    ap.add_argument("--grow-to", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocators", default="system",
                    help="comma-separated, of: " + ", ".join(ALLOCATORS) + " (a small and a big "
                         "registry process for each, all measured in turn)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    if not allocators or any(a not in ALLOCATORS for a in allocators):
        ap.error(f"--allocators: choose from {', '.join(ALLOCATORS)}")

    import multiprocessing as mp

    tmp = Path(tempfile.mkdtemp(prefix="speedbench-"))
    paths = [str(p) for p in _sample_uploads(args.dataset, args.uploads, args.seed)]
    ctx = mp.get_context("spawn")
    # The first small registry registers the works; every other process opens its
    # folder once they are there (the big ones then grow in memory, side by side).
    runs = [(alloc, role) for alloc in allocators for role in ("small", "big")]
    first = _start(ctx, "small", allocators[0], args, tmp, paths)
    sizes = {(allocators[0], "small"): first[1].recv()}
    started = {(allocators[0], "small"): first}
    for alloc, role in runs[1:]:
        started[(alloc, role)] = _start(ctx, "open" if role == "small" else "big", alloc, args, tmp, paths)
    for key in runs[1:]:
        sizes[key] = started[key][1].recv()
    acc: dict[tuple[str, str], dict[str, list[Any]]] = {key: {} for key in runs}
    # One process measures at a time, in turn (the starting one rotates), so machine
    # load (this box is shared) and drift weigh on every side alike.
    for i in range(len(paths)):
        for j in range(len(runs)):
            key = runs[(i + j) % len(runs)]
            conn = started[key][1]
            conn.send(i)
            for k, v in conn.recv().items():
                acc[key].setdefault(k, []).extend(v)
    for p, conn in started.values():
        conn.send(None)
        p.join()
    results: dict[str, Any] = {"uploads": len(paths)}
    for alloc in allocators:
        label = f"allocator: {alloc}"
        results[alloc] = _report(sizes[(alloc, "small")], sizes[(alloc, "big")], acc[(alloc, "small")],
                                 acc[(alloc, "big")], label)
    if len(allocators) > 1:
        base = allocators[0]
        for alloc in allocators[1:]:
            for role in ("small", "big"):
                n = str(sizes[(alloc, role)])
                ratio = results[alloc][n]["total"]["median"] / results[base][n]["total"]["median"]
                print(f"total median, {alloc} / {base}, {n} works: {ratio:.2f}x")
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
