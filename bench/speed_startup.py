"""How long a process takes to load a large registry's postings, with and without a snapshot.

    python bench/speed_startup.py --from /work/benchruns/h7/data --scratch /work/benchruns/startup \\
        --grow-to 10000 --dataset /work/benchdata/dev

``--from`` is a data dir whose works were registered normally (``artwatch
works import``). Its feature files are copied into ``--scratch`` and the
registry is grown to ``--grow-to`` works with the synthetic works of
``speed_matching.py``, written to disk like registered ones (one feature file
and one journal line each). Then, in this one process, timed with
``time.perf_counter`` (wall) and ``time.process_time`` (CPU):

1. ``retrain``: the real :meth:`LocalIndex.retrain` on the whole registry
   (reads every work, trains the vocabulary, with sub-words at this size,
   quantises every work under it and snapshots the postings before it
   announces the vocabulary);
2. ``full load``: a new index replays the journal ignoring the snapshot: it
   reads every work's file and quantises its descriptors (what every process
   did at start before snapshots);
3. ``snapshot write``: that index saves its postings (the retrain's snapshot
   deleted first);
4. ``restore``: another new index starts from the snapshot;
5. the two indexes answer the same uploads' searches: the correspondences
   must be identical, and the search time of each is reported (the restored
   one reads memory-mapped pages).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed_matching import _sample_uploads, synthetic_works  # the same synthetic works and uploads


def _timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", type=Path, required=True, help="data dir with registered works")
    ap.add_argument("--scratch", type=Path, required=True, help="emptied and filled with the grown registry")
    ap.add_argument("--grow-to", type=int, default=10_000)
    ap.add_argument("--dataset", type=Path, required=True, help="benchmark dataset (uploads for the searches)")
    ap.add_argument("--uploads", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from matching.decode import decode_image
    from matching.engine import UPLOAD_MAX_SIDE
    from matching.features import extract_features, limit_native_threads
    from matching.replica import LocalIndex
    from matching.store.folder import FolderFeatureStore

    limit_native_threads()
    root = args.scratch / "features"
    if args.scratch.exists():
        shutil.rmtree(args.scratch)
    (root / "works").mkdir(parents=True)
    src = FolderFeatureStore(args.src / "features")
    store = FolderFeatureStore(root)
    real = [w for w in (src.get_work(i) for i in src.work_ids()) if w is not None]
    t = time.perf_counter()
    for w in real:
        store.put_work(w)
    pool = np.concatenate([f.desc for w in real for f in (w.direct, w.mirrored) if len(f)])
    rng = np.random.default_rng(args.seed)
    for w in synthetic_works(real, pool, args.grow_to - len(real), rng):
        store.put_work(w)
    ids = store.work_ids()
    store.append([f"add {i}" for i in ids])
    size = sum(p.stat().st_size for p in store.works_dir.iterdir())
    print(f"wrote {len(ids)} works ({size / 2**30:.1f} GiB of feature files) in "
          f"{time.perf_counter() - t:.0f}s", file=sys.stderr)

    res: dict[str, Any] = {"works": len(ids), "feature_files_gib": round(size / 2**30, 2)}
    _, w, c = _timed(LocalIndex(store).retrain)
    res["retrain"] = {"wall_s": round(w, 1), "cpu_s": round(c, 1)}
    print(f"retrain: {w:.0f}s", file=sys.stderr)

    full = LocalIndex(store)
    full._restore_snapshot = lambda: None  # type: ignore[method-assign]
    full._write_snapshot = lambda **_: None  # type: ignore[method-assign]  # measured on its own below
    _, w, c = _timed(full.refresh)
    res["full_load"] = {"wall_s": round(w, 1), "cpu_s": round(c, 1)}
    print(f"full load: {w:.0f}s", file=sys.stderr)
    del full._write_snapshot, full._restore_snapshot
    assert full.vocab is not None
    shutil.rmtree(store.snapshots_dir)
    _, w, c = _timed(full._write_snapshot)
    meta = json.loads(store.snapshot_pointer(full.vocab.version).read_text())
    snap = store.snapshots_dir / meta["dir"]
    res["snapshot_write"] = {"wall_s": round(w, 1), "cpu_s": round(c, 1), "postings": meta["postings"],
                             "gib": round(sum(p.stat().st_size for p in snap.iterdir()) / 2**30, 2)}
    restored = LocalIndex(store)
    _, w, c = _timed(restored.refresh)
    res["restore"] = {"wall_s": round(w, 2), "cpu_s": round(c, 2)}
    assert restored.work_ids == full.work_ids and restored._main is not None

    paths = _sample_uploads(args.dataset, args.uploads, args.seed)
    queries = [extract_features(np.asarray(decode_image(p.read_bytes(), name=p.name, max_side=UPLOAD_MAX_SIDE).rgb),
                                balanced=True) for p in paths]
    times: dict[str, list[float]] = {"in_memory": [], "restored": []}
    for q in queries:
        got = {}
        for name, ix in (("restored", restored), ("in_memory", full)):
            c = time.process_time()
            found = ix.search(q)
            times[name].append(time.process_time() - c)
            got[name] = [(f.work_id, f.mirrored, f.votes, f.q_xy.tolist(), f.w_xy.tolist()) for f in found]
        assert got["restored"] == got["in_memory"], "restored index answers differently"
    res["search_ms_median"] = {k: round(float(np.median(v)) * 1000, 2) for k, v in times.items()}
    res["search_ms_first"] = {k: round(v[0] * 1000, 2) for k, v in times.items()}
    res["restore_vs_full_load_wall"] = round(res["restore"]["wall_s"] / res["full_load"]["wall_s"], 4)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
