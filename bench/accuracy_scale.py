"""Per-upload cost at 200 and at 10,000 registered works, in one process.

    python bench/accuracy_scale.py DATA_DIR DATASET [--uploads 200] [--total 10000]

DATA_DIR is an engine already holding the dataset's works (bench/accuracy.py
leaves one). The same uploads are analysed twice: with the registry as is,
then after filler works bring it to ``--total``. Fillers are made from the
registered works' own keypoints so their descriptors follow the real
distribution: each filler takes the keypoints of two random works, rotates
every descriptor's 4x4 spatial grid and 8 orientation bins by the same
quarter turn (the descriptor of the rotated patch), and gets a random PDQ
hash. They are added in memory only (no files), through the same index code
path as registered works. Prints per-stage median and p95 CPU ms and ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matching.decode import decode_image
from matching.engine import UPLOAD_MAX_SIDE, Engine
from matching.features import LocalFeatures, StoredWork, limit_native_threads


def rotate_desc(desc: np.ndarray, k: int) -> np.ndarray:
    """SIFT descriptors of the patches turned by k quarter turns."""
    d = desc.reshape(-1, 4, 4, 8)
    d = np.rot90(d, k=k, axes=(1, 2))
    d = np.roll(d, 2 * k, axis=3)
    return np.ascontiguousarray(d.reshape(-1, 128))


def filler(rng: np.random.Generator, a: StoredWork, b: StoredWork, wid: int) -> StoredWork:
    k = int(rng.integers(1, 4))
    parts = []
    for f in (a.direct, b.mirrored):
        n = len(f) // 2
        idx = rng.choice(len(f), n, replace=False) if n else np.zeros(0, np.int64)
        parts.append(LocalFeatures(f.xy[idx], f.scale[idx], f.angle[idx], rotate_desc(f.desc[idx], k),
                                   a.width, a.height))
    direct = LocalFeatures.concat(parts)
    mirrored = LocalFeatures(direct.xy.copy(), direct.scale, direct.angle, rotate_desc(direct.desc, 2),
                             a.width, a.height)
    pdq = rng.integers(0, 256, (8, 32), dtype=np.uint8)
    return StoredWork(wid, 10_000 + wid % 50, a.kind, a.width, a.height, direct, mirrored, pdq)


def measure(engine: Engine, uploads: list[Path]) -> dict[str, dict[str, float]]:
    rows: dict[str, list[float]] = {}
    for p in uploads:
        t0 = time.process_time()
        img = decode_image(p.read_bytes(), name=p.name, max_side=UPLOAD_MAX_SIDE)
        tm = {"decode": time.process_time() - t0}
        a = engine.analyse_decoded(img, timings=tm)
        engine.score(a, img)
        tm["total"] = time.process_time() - t0
        for k, v in tm.items():
            rows.setdefault(k, []).append(v * 1000.0)
    return {k: {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95))}
            for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--total", type=int, default=10_000)
    args = ap.parse_args()
    limit_native_threads()
    engine = Engine(args.data_dir)
    ups = [json.loads(ln) for ln in (args.dataset / "uploads.jsonl").read_text().splitlines() if ln]
    step = max(1, len(ups) // args.uploads)
    paths = [args.dataset / u["file"] for u in ups[::step][: args.uploads]]
    base_ids = engine.index.work_ids
    measure(engine, paths[:5])  # warm-up: builds the inverted file
    small = measure(engine, paths)
    rng = np.random.default_rng(0)
    works = [engine.index.work(w) for w in base_ids]
    real = [w for w in works if w is not None]
    t = time.time()
    next_id = max(base_ids) + 1
    while len(engine.index.work_ids) < args.total:
        a, b = rng.choice(len(real), 2, replace=False)
        engine.index._insert(filler(rng, real[int(a)], real[int(b)], next_id))
        next_id += 1
    measure(engine, paths[:5])
    print(f"added fillers in {time.time() - t:.0f}s", file=sys.stderr)
    big = measure(engine, paths)
    out = {"works_small": len(base_ids), "works_big": len(engine.index.work_ids),
           "uploads": len(paths), "small": small, "big": big,
           "ratio_median": {k: big[k]["median_ms"] / max(1e-9, small[k]["median_ms"]) for k in small}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
