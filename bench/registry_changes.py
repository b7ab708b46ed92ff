"""How soon another process sees a registration or a removal, at 200, 10,000 and 100,000 works.

    python bench/registry_changes.py --sizes 200 10000 100000 --changes 5

Two engines share one feature store (a folder, as in the embedded default): the
*writer* registers and removes works the way the web app and the CLI do
(``Engine.register`` / ``unregister``: the work's features go to the store, then
an ``add``/``del`` line to its change feed), and the *reader* stands for a
worker holding the whole registry. The two live in this one process, which
changes nothing in what the reader does: it learns of the change only through
the store, exactly as another process would, on the next upload it analyses.

The reader is grown in memory to each size with synthetic works (as in
``bench/speed_matching.py``: real works' keypoint geometry, descriptors drawn
from the pool of real descriptors so they land in real words, random PDQ
hashes), with at most ``--keypoints`` keypoints per mirror state so that
100,000 works fit beside the rest of the machine. At each size, per change,
the reader's costs are timed (CPU ms, ``time.process_time``):

- ``refresh``: replaying the feed (one query / stat, then one ``get_work`` per
  added work) into the postings;
- ``pdq_sync``: bringing the PDQ index in step (``Engine._sync_pdq``);
- ``first_query``: the reader's next ``analyse`` of a copy of the changed
  work, after those two;
- ``visible``: wall-clock seconds from the writer's call returning to the
  reader's first query that gives the right answer (the copy matches after a
  registration, no longer matches after a removal).

Alongside, in the same run: what the reader did before (a new ``PdqIndex``
from every work on each change: ``pdq_rebuild``), and counters that show no
change made the reader re-read the registry (``get_work`` calls per change,
full reloads).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _jpeg(rgb: Any, q: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _grow(reader: Any, target: int, pool: Any, real: list[Any], rng: Any, keypoints: int, next_id: int) -> int:
    from matching.features import LocalFeatures, StoredWork

    idx = reader.index
    while len(idx.works) < target:
        src = real[int(rng.integers(len(real)))]
        feats = []
        for f in (src.direct, src.mirrored):
            keep = rng.permutation(len(f))[:keypoints]
            desc = pool[rng.integers(0, pool.shape[0], keep.size)]
            feats.append(LocalFeatures(f.xy[keep], f.scale[keep], f.angle[keep], desc, f.width, f.height))
        pdq = np.packbits(rng.integers(0, 2, (8, 256), dtype=np.uint8), axis=1)
        idx._insert(StoredWork(next_id, 1000 + next_id % 20, src.kind, src.width, src.height, feats[0], feats[1], pdq))
        next_id += 1
    idx._compact(merge=True)
    return next_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 10_000, 100_000])
    ap.add_argument("--changes", type=int, default=5, help="registrations (and as many removals) per size")
    ap.add_argument("--keypoints", type=int, default=128, help="keypoints per mirror state of a synthetic work")
    ap.add_argument("--seed-works", type=int, default=60, help="real (demo) works that train the vocabulary")
    ap.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = ap.parse_args()

    from config.settings import load_settings
    from matching import WorkRef, build_engine
    from matching.index.pdq import PdqIndex
    from workers.demo import painting

    tmp = Path(tempfile.mkdtemp(prefix="registry-changes-"))
    settings = load_settings(data_dir=tmp, matching={"use_embedder": False, "descriptor": ""})
    writer = build_engine(settings)
    t = time.perf_counter()
    for i in range(1, args.seed_works + 1):
        writer.register(WorkRef(i, 1 + i % 5, "artwork"), _jpeg(np.asarray(painting(i)), 95))
    writer.retrain()
    print(f"{args.seed_works} seed works registered and trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    reader = build_engine(settings)
    reader.index.refresh()
    store = reader.index.store
    real = [w for w in (store.get_work(wid) for wid in reader.index.work_ids) if w is not None]
    pool = np.concatenate([f.desc for w in real for f in (w.direct, w.mirrored) if len(f)])
    rng = np.random.default_rng(0)

    # Counters on the reader: every work read from the store, every full reload.
    calls = {"get_work": 0, "reload_all": 0}
    get_work, reload_all = store.get_work, reader.index._reload_all

    def counted_get(wid: int) -> Any:
        calls["get_work"] += 1
        return get_work(wid)

    def counted_reload(*a: Any, **kw: Any) -> Any:
        calls["reload_all"] += 1
        return reload_all(*a, **kw)

    store.get_work = counted_get  # type: ignore[method-assign]
    reader.index._reload_all = counted_reload  # type: ignore[method-assign]

    changed = [np.asarray(painting(10_000 + k)) for k in range(args.changes)]
    copies = [_jpeg(np.ascontiguousarray(rgb[20:-20, 30:-30]), 80) for rgb in changed]
    results: list[dict[str, Any]] = []
    next_id = 1_000_000
    for size in args.sizes:
        t = time.perf_counter()
        next_id = _grow(reader, size, pool, real, rng, args.keypoints, next_id)
        reader.analyse(copies[0])  # warm: PDQ tables, segments
        print(f"reader at {len(reader.index.works)} works (grown in {time.perf_counter() - t:.0f} s), "
              f"RSS {_rss_mib():.0f} MiB", file=sys.stderr)
        row: dict[str, Any] = {"works": len(reader.index.works), "rss_mib": round(_rss_mib())}
        ms: dict[str, list[float]] = {k: [] for k in ("register", "unregister", "refresh", "pdq_sync",
                                                     "first_query", "pdq_rebuild")}
        visible: dict[str, list[float]] = {"add": [], "del": []}
        before = dict(calls)
        for k, (rgb, copy) in enumerate(zip(changed, copies, strict=True)):
            wid = 500_000 + k
            for op in ("add", "del"):
                c0 = time.process_time()
                if op == "add":
                    writer.register(WorkRef(wid, 3, "artwork"), _jpeg(rgb, 95))
                else:
                    writer.unregister(wid)
                ms["register" if op == "add" else "unregister"].append((time.process_time() - c0) * 1000)
                w0 = time.perf_counter()
                c0 = time.process_time()
                reader.index.refresh()
                c1 = time.process_time()
                reader._sync_pdq()
                c2 = time.process_time()
                ms["refresh"].append((c1 - c0) * 1000)
                ms["pdq_sync"].append((c2 - c1) * 1000)
                while True:
                    c0 = time.process_time()
                    found = any(c.match and c.work_id == wid for c in reader.analyse(copy))
                    if found == (op == "add"):
                        break
                ms["first_query"].append((time.process_time() - c0) * 1000)
                visible[op].append(time.perf_counter() - w0)
            # What the reader did before on every change: a new PDQ index from every work.
            c0 = time.process_time()
            old = PdqIndex()
            for w, sw in reader.index.works.items():
                if sw.pdq.shape[0]:
                    old.add(w, sw.owner_id, sw.pdq)
            len(old)
            old.search(np.zeros(32, np.uint8), 64)
            ms["pdq_rebuild"].append((time.process_time() - c0) * 1000)
        row.update({k: round(statistics.median(v), 2) for k, v in ms.items()})
        row["visible_s_max"] = {op: round(max(v), 3) for op, v in visible.items()}
        row["get_work_per_change"] = (calls["get_work"] - before["get_work"]) / (2 * args.changes)
        row["full_reloads"] = calls["reload_all"] - before["reload_all"]
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
