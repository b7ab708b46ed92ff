"""Choose the in-process vector engine by measurement (issue 2 / issue 3).

Compares qdrant-edge-py (EdgeShard) with qdrant-client's local mode
(``QdrantClient(path=...)``) on the same random unit vectors: build time,
search p50/p95 (top 10, cosine), with and without an owner filter, and the
time to open an existing index from disk (what a second process pays).

    python bench/index_embedded.py --sizes 10000 100000 --dim 512 --queries 200

Prints one JSON object per (engine, size) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 1000
OWNERS = 20
PERSIST_N = 1000


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


def _time_queries(fn: Callable[[np.ndarray, int | None], Any], queries: np.ndarray, owner: bool) -> list[float]:
    out = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        fn(q, (i % OWNERS) if owner else None)
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_edge(root: Path, vecs: np.ndarray, owners: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    import qdrant_edge as qe

    path = root / "edge"
    cfg = qe.EdgeConfig(vectors={"clip": qe.EdgeVectorParams(size=vecs.shape[1], distance=qe.Distance.Cosine)})
    t0 = time.perf_counter()
    shard = qe.EdgeShard.create(str(path), cfg)
    for s in range(0, len(vecs), BATCH):
        pts = [
            qe.Point(int(i), {"clip": vecs[i].tolist()}, {"work_id": int(i), "owner_id": int(owners[i])})
            for i in range(s, min(len(vecs), s + BATCH))
        ]
        shard.update(qe.UpdateOperation.upsert_points(pts))
    shard.flush()
    t_insert = time.perf_counter() - t0
    shard.optimize()
    t_build = time.perf_counter() - t0

    def search(q: np.ndarray, owner: int | None) -> Any:
        flt = None
        if owner is not None:
            flt = qe.Filter(must=[qe.FieldCondition(key="owner_id", match=qe.MatchValue(owner))])
        return shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(q.tolist(), using="clip"),
                                           filter=flt, with_payload=True))

    res = search(queries[0], None)
    assert len(res) == 10
    plain = _time_queries(search, queries, False)
    filt = _time_queries(search, queries, True)
    shard.close()
    t = time.perf_counter()
    shard = qe.EdgeShard.load(str(path))
    search(queries[0], None)
    t_open = time.perf_counter() - t
    shard.close()
    return {"insert_s": t_insert, "build_s": t_build, "open_s": t_open, "plain": plain, "filtered": filt}


def bench_local(root: Path, vecs: np.ndarray, owners: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Local mode keeps every point in memory and searches with numpy; the
    on-disk mode only adds SQLite persistence of each upsert. Persisting is so
    slow (about 18 s per 1000 points here) that the search timing uses the
    same engine opened with ``:memory:``, and persistence is timed on the
    first PERSIST_N points only."""
    from qdrant_client import QdrantClient, models

    def fill(client: QdrantClient, n: int) -> None:
        client.create_collection(
            "works", vectors_config={"clip": models.VectorParams(size=vecs.shape[1], distance=models.Distance.COSINE)}
        )
        for s in range(0, n, BATCH):
            client.upsert("works", [
                models.PointStruct(id=int(i), vector={"clip": vecs[i].tolist()},
                                   payload={"work_id": int(i), "owner_id": int(owners[i])})
                for i in range(s, min(n, s + BATCH))
            ])

    path = root / "local"
    n_persist = min(len(vecs), PERSIST_N)
    t0 = time.perf_counter()
    disk = QdrantClient(path=str(path))
    fill(disk, n_persist)
    disk.close()
    t_persist = time.perf_counter() - t0
    t = time.perf_counter()
    disk = QdrantClient(path=str(path))
    t_open = time.perf_counter() - t
    disk.close()

    t0 = time.perf_counter()
    client = QdrantClient(":memory:")
    fill(client, len(vecs))
    t_build = time.perf_counter() - t0

    def search(q: np.ndarray, owner: int | None) -> Any:
        flt = None
        if owner is not None:
            flt = models.Filter(must=[models.FieldCondition(key="owner_id", match=models.MatchValue(value=owner))])
        return client.query_points("works", query=q.tolist(), using="clip", limit=10, query_filter=flt,
                                   with_payload=True).points

    assert len(search(queries[0], None)) == 10
    plain = _time_queries(search, queries, False)
    filt = _time_queries(search, queries, True)
    client.close()
    return {"insert_s": t_build, "build_s": t_build, "open_s": t_open, "plain": plain, "filtered": filt,
            "persist_s_per_1000": t_persist / n_persist * 1000, "open_n": n_persist}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--engines", nargs="+", default=["edge", "local"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in args.sizes:
        vecs = rng.standard_normal((n, args.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        owners = rng.integers(0, OWNERS, n)
        picked = vecs[rng.integers(0, n, args.queries)]  # drawn before the noise, as the published runs did
        queries = picked + 0.05 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
        for engine in args.engines:
            root = Path(tempfile.mkdtemp(prefix=f"idxbench-{engine}-"))
            try:
                r = (bench_edge if engine == "edge" else bench_local)(root, vecs, owners, queries)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            row = {
                "engine": engine, "n": n, "dim": args.dim,
                "build_s": round(r["build_s"], 2), "open_s": round(r["open_s"], 3),
                "p50_ms": round(statistics.median(r["plain"]), 3), "p95_ms": round(_pct(r["plain"], 0.95), 3),
                "p50_filtered_ms": round(statistics.median(r["filtered"]), 3),
                "p95_filtered_ms": round(_pct(r["filtered"], 0.95), 3),
            }
            if "persist_s_per_1000" in r:
                row["persist_s_per_1000_points"] = round(r["persist_s_per_1000"], 2)
                row["open_s_measured_at_n"] = r["open_n"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| engine | vectors | build s | open s | search p50 ms | p95 ms | owner-filtered p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['n']} | {r['build_s']} | {r['open_s']} | {r['p50_ms']} | {r['p95_ms']} "
              f"| {r['p50_filtered_ms']} | {r['p95_filtered_ms']} |")


if __name__ == "__main__":
    main()
