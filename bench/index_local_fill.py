"""qdrant-client local mode at 100,000 vectors: fill with upload_collection, then search p50.

bench/index_embedded.py fills local mode point by point with upsert, which did not finish at
100k on the loaded machine; this fills in batches of 5,000 so the search figure exists.

    python bench/index_local_fill.py
"""

import statistics
import time

import numpy as np
from qdrant_client import QdrantClient, models

rng = np.random.default_rng(0)
n, d = 100_000, 512
vecs = rng.standard_normal((n, d)).astype(np.float32)
vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
c = QdrantClient(":memory:")
c.create_collection("works", vectors_config={"clip": models.VectorParams(size=d, distance=models.Distance.COSINE)})
t = time.perf_counter()
B = 5000
for s in range(0, n, B):
    c.upload_collection(
        "works",
        vectors={"clip": vecs[s:s+B]},
        payload=[{"work_id": i, "owner_id": i % 20} for i in range(s, min(n, s+B))],
        ids=list(range(s, min(n, s+B))),
    )
    print("filled", s + B, round(time.perf_counter() - t, 1), flush=True)
q = rng.standard_normal((20, d)).astype(np.float32)
ts = []
for v in q:
    t0 = time.perf_counter()
    c.query_points("works", query=v.tolist(), using="clip", limit=10)
    ts.append((time.perf_counter() - t0) * 1000)
print("local mode 100k p50 ms", round(statistics.median(ts), 1), "p95", round(sorted(ts)[18], 1), flush=True)
