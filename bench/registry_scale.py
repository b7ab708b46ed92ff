"""A registry of 200, 10,000 and 100,000 works on one node, measured in one run (issue 19, point 1).

    python bench/registry_scale.py --from /work/benchruns/dev/data --dataset /work/benchdev/dev \\
        --scratch /work/benchruns/scale --sizes 10000 100000

``--from`` is a data dir whose works were registered normally (``artwatch works
import``: the 200-work registry). For each of ``--sizes`` a registry of real
files is built in ``--scratch/N``: the real works' feature files plus the
synthetic works of ``speed_matching.py`` (each copies a real work's keypoint
geometry and draws its descriptors from the pool of real ones), one feature
file and one journal line each, as registered works are kept. The synthetic
works are drawn once, in order, so a smaller registry's works are the first
ones of the larger (the larger's files hard-link the smaller's). Then, each
step in a process of its own (spawned, as a worker's child is a separate
interpreter), timed with ``time.perf_counter`` (wall) and
``time.process_time`` (CPU):

1. ``retrain`` of every registry (:meth:`LocalIndex.retrain`: sample, train with
   sub-words, quantise every work, snapshot, announce);
2. ``memory``: ``--processes`` engine processes per registry (what a worker
   builds: ``matching.build_engine``, the embedder and the descriptor off),
   each started on the snapshot (``startup_s``: build the engine and load the
   registry), each analysing ``--warm`` uploads so the postings searches touch
   are resident; then each one's ``/proc/PID/smaps_rollup``: RSS, PSS (shared
   pages divided among the processes mapping them; their sum is the node's
   memory, shared pages counted once) and private memory. Then each process
   reads every page it maps from the snapshot (what a worker holds once its
   searches have visited every word) and the same figures are read again
   (``all_touched``);
3. ``per upload``: one engine process per registry (200 = ``--from`` itself),
   the same ``--uploads`` dev uploads sent to each in turn, upload by upload
   (so machine load weighs on all alike): CPU ms by stage as in
   ``speed_matching.py``, median and p95. With ``--base CHECKOUT`` each
   registry is also measured by that checkout's engine (a git worktree of an
   earlier commit) in a process of its own, in the same rotation: before and
   after in one run;
4. ``accuracy``: every upload of the dev set (or ``--accuracy-uploads``)
   analysed by the 200-work engine and the largest registry's, in
   ``--processes`` processes: the matches the 200 works give that the large
   registry still gives, and any match to a synthetic work;
5. ``registration``: one real image (a demo painting) registered at each
   size through :meth:`matching.Engine.register`, then removed (wall and CPU).

``--steps`` picks among build, retrain and the five above; ``--reuse --steps
memory`` (say) measures registries built by an earlier run again without
rebuilding them, and ``--steps retrain --sizes N`` retrains one size alone (two
such runs can share a machine). ``--synthetic cells`` builds synthetic works
whose descriptors are no copies of real ones (``speed_matching.synthetic_works``).
Prints one JSON object and a Markdown summary.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory_per_process import memory_rows
from speed_matching import STAGES, _measure, _pct, _sample_uploads, synthetic_works
from speed_startup import _timed

OFF = {"use_embedder": False, "descriptor": ""}
STEPS = ("build", "retrain", "memory", "per_upload", "accuracy", "registration")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(src: Path, scratch: Path, sizes: list[int], seed: int, *, cells: bool = False) -> dict[int, Path]:
    """One data dir per size under ``scratch``, each a registry of feature files."""
    from matching.store.folder import FolderFeatureStore

    real_store = FolderFeatureStore(src / "features")
    real = [w for w in (real_store.get_work(i) for i in real_store.work_ids()) if w is not None]
    pool = np.concatenate([f.desc for w in real for f in (w.direct, w.mirrored) if len(f)])
    rng = np.random.default_rng(seed)
    gen = synthetic_works(real, pool, max(sizes) - len(real), rng, cells=cells)
    dirs: dict[int, Path] = {}
    prev: Any = None
    for n in sorted(sizes):
        d = scratch / str(n)
        if d.exists():
            shutil.rmtree(d)
        store = FolderFeatureStore(d / "features")
        store.works_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        if prev is None:
            for w in real:
                store.put_work(w)
        else:  # the smaller registry's works, linked rather than written again
            for p in prev.works_dir.iterdir():
                os.link(p, store.works_dir / p.name)
        have = len(store.work_ids())
        for _ in range(n - have):
            store.put_work(next(gen))
        store.append([f"add {i}" for i in store.work_ids()])
        size = sum(p.stat().st_size for p in store.works_dir.iterdir())
        _log(f"{n} works: {size / 2**30:.1f} GiB of feature files in {time.perf_counter() - t:.0f}s")
        dirs[n] = d
        prev = store
    return dirs


def _retrain_child(data_dir: str, load_threads: int, out: Any) -> None:
    from matching.features import limit_native_threads
    from matching.replica import LocalIndex
    from matching.store.folder import FolderFeatureStore

    limit_native_threads()
    store = FolderFeatureStore(Path(data_dir) / "features")
    ix = LocalIndex(store, load_threads=load_threads)
    _, w, c = _timed(ix.retrain)
    assert ix.vocab is not None
    meta = json.loads(store.snapshot_pointer(ix.vocab.version).read_text())
    snap = store.snapshots_dir / meta["dir"]
    hwm = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    out.put({"wall_s": round(w, 1), "cpu_s": round(c, 1), "postings": meta["postings"],
             "peak_rss_mib": round(int(hwm.split()[1]) / 1024),
             "snapshot_gib": round(sum(p.stat().st_size for p in snap.iterdir()) / 2**30, 3),
             "words": ix.vocab.size // ix.vocab.k3, "sub_words": ix.vocab.k3, "load_threads": ix._threads()})


def _run(target: Any, *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:  # a child the kernel kills (out of memory) never answers
        try:
            res = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise SystemExit(f"{target.__name__} died (exit {p.exitcode}) without a result") from None
    p.join()
    if p.exitcode:
        raise SystemExit(f"{target.__name__} exited {p.exitcode}")
    return res


def _engine(data_dir: str) -> Any:
    from config.settings import load_settings
    from matching import build_engine

    engine = build_engine(load_settings(data_dir=data_dir, matching=OFF))
    engine.index.refresh()
    return engine


def _touch_mapped(under: str) -> int:
    """Fault in every page this process maps from files below ``under`` (the
    snapshots): what a long-running worker ends up holding once its searches
    have visited every word. Returns the bytes touched."""
    import ctypes

    total = 0
    with open("/proc/self/maps", encoding="utf-8") as fh:
        ranges = [ln.split() for ln in fh]
    for parts in ranges:
        if len(parts) >= 6 and parts[5].startswith(under):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            for a in range(lo, hi, 1 << 26):
                ctypes.string_at(a, min(1 << 26, hi - a))
            total += hi - lo
    return total


def _memory_child(data_dir: str, warm: list[str], ready: Any, go: Any, done: Any, results: Any) -> None:
    w, c = time.perf_counter(), time.process_time()
    engine = _engine(data_dir)
    startup = (time.perf_counter() - w, time.process_time() - c)
    for p in warm:
        engine.analyse(Path(p).read_bytes(), name=Path(p).name)
    results.put({"pid": os.getpid(), "works": len(engine.index.work_ids),
                 "startup_s": round(startup[0], 2), "startup_cpu_s": round(startup[1], 2)})
    ready.release()
    go.wait()
    touched = _touch_mapped(str((Path(data_dir) / "features" / "snapshots").resolve()))
    results.put({"pid": os.getpid(), "mapped_gib": round(touched / 2**30, 3)})
    ready.release()
    done.wait()


def memory(data_dir: Path, processes: int, warm: list[str]) -> dict[str, Any]:
    """Memory after the warm-up uploads, then once every mapped snapshot page is touched."""
    ctx = mp.get_context("spawn")
    ready, go, done, results = ctx.Semaphore(0), ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_memory_child, args=(str(data_dir), warm, ready, go, done, results))
             for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    loaded = {r["pid"]: r for r in (results.get() for _ in procs)}
    warm_rows = memory_rows(procs, loaded)
    go.set()
    for _ in procs:
        ready.acquire()
    touched = {r["pid"]: r for r in (results.get() for _ in procs)}
    all_rows = memory_rows(procs, touched)
    done.set()
    for p in procs:
        p.join()
    return {"processes": warm_rows, "node_pss_mib": round(sum(r["pss_mib"] for r in warm_rows), 1),
            "all_touched": {"processes": all_rows,
                            "node_pss_mib": round(sum(r["pss_mib"] for r in all_rows), 1)}}


def _stage_child(data_dir: str, paths: list[str], code: str, conn: Any) -> None:
    if code:  # another checkout's engine (--base), imported before this one's could be
        sys.path.insert(0, code)
    engine = _engine(data_dir)
    data = [Path(p).read_bytes() for p in paths]
    names = [Path(p).name for p in paths]
    _measure(engine, data[:5], names[:5])  # warm-up: imports, compiled loops, first page touches
    conn.send(len(engine.index.work_ids))
    while (i := conn.recv()) is not None:
        conn.send(_measure(engine, data[i : i + 1], names[i : i + 1]))


def per_upload(dirs: dict[Any, tuple[Path, str]], paths: list[str]) -> dict[Any, dict[str, list[Any]]]:
    """``dirs``: key -> (data dir, checkout whose engine measures it; "" for this one)."""
    ctx = mp.get_context("spawn")
    started = {}
    # Another checkout's engines (--base) start first and have restored their snapshots before this
    # one's start: this checkout may convert a snapshot of an older format (a process that mapped
    # the old one keeps its pages).
    for first in (True, False):
        batch = [n for n, (_, code) in dirs.items() if bool(code) == first]
        for n in batch:
            d, code = dirs[n]
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_stage_child, args=(str(d), paths, code, theirs))
            p.start()
            started[n] = (p, mine)
        for n in batch:
            got = started[n][1].recv()
            who = f"{n[0]}-work engine ({n[1]})" if isinstance(n, tuple) else f"{n}-work engine"
            _log(f"per upload: {who} ready ({got} works)")
    started = {n: started[n] for n in dirs}  # the rotation's order, as before
    acc: dict[Any, dict[str, list[Any]]] = {n: {} for n in dirs}
    order = list(dirs)
    for i in range(len(paths)):
        for j in range(len(order)):
            n = order[(i + j) % len(order)]
            conn = started[n][1]
            conn.send(i)
            for k, v in conn.recv().items():
                acc[n].setdefault(k, []).extend(v)
        if (i + 1) % 50 == 0:
            _log(f"per upload: {i + 1}/{len(paths)}")
    for p, conn in started.values():
        conn.send(None)
        p.join()
    return acc


def _accuracy_child(small: str, big: str, paths: list[str], out: Any) -> None:
    engines = (_engine(small), _engine(big))
    rows = []
    for p in paths:
        data = Path(p).read_bytes()
        rows.append([sorted(c.work_id for c in e.analyse(data, name=Path(p).name) if c.match) for e in engines])
    out.put(rows)


def accuracy(small: Path, big: Path, paths: list[str], processes: int, n_real: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    parts = [paths[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_accuracy_child, args=(str(small), str(big), part, q)) for part in parts]
    for p in procs:
        p.start()
    rows = [r for _ in procs for r in q.get()]
    for p in procs:
        p.join()
    small_matches = sum(len(a) for a, _ in rows)
    kept = sum(len(set(a) & set(b)) for a, b in rows)
    synthetic = sum(1 for _, b in rows for w in b if w > n_real)
    new_real = sum(1 for a, b in rows for w in b if w <= n_real and w not in a)
    return {"uploads": len(rows), "matches_at_200": small_matches, "kept": kept,
            "matches_to_synthetic_works": synthetic, "new_matches_to_real_works": new_real}


def _register_child(data_dir: str, out: Any) -> None:
    from matching import WorkRef
    from workers.demo import painting

    engine = _engine(data_dir)
    buf = io.BytesIO()
    painting(7).save(buf, "PNG")
    wid = max(engine.index.work_ids) + 1
    ref = WorkRef(work_id=wid, owner_id=1, kind="artwork")
    _, w, c = _timed(lambda: engine.register(ref, buf.getvalue(), name="painting.png"))
    _, w2, c2 = _timed(lambda: engine.unregister(wid))
    out.put({"register_wall_ms": round(w * 1000, 1), "register_cpu_ms": round(c * 1000, 1),
             "remove_wall_ms": round(w2 * 1000, 1), "remove_cpu_ms": round(c2 * 1000, 1)})


def _summary(ms: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"median": round(statistics.median(v), 2), "p95": round(_pct(v, 0.95), 2)}
            for k, v in ms.items() if k != "matched"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", type=Path, required=True, help="data dir holding the 200 registered works")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--scratch", type=Path, required=True, help="one registry per size is built here")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--uploads", type=int, default=300, help="uploads timed per registry")
    ap.add_argument("--accuracy-uploads", type=int, default=0, help="0: every upload of the dataset")
    ap.add_argument("--processes", type=int, default=2, help="engine processes per node (memory, accuracy)")
    ap.add_argument("--warm", type=int, default=30, help="uploads each memory process analyses first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", choices=("copies", "cells"), default="copies",
                    help="synthetic descriptors: rows of the real pool (copies) or put together cell by cell "
                         "(see speed_matching.synthetic_works)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep registries already built and retrained (leaves build and retrain out of --steps)")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help=f"which of {', '.join(STEPS)} to run (comma-separated; build and retrain run per size, "
                         "so two runs with different --sizes can retrain side by side)")
    ap.add_argument("--load-threads", type=int, default=0,
                    help="retrain: threads that read and quantise works (matching.load_threads; 0: the default)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--base", default="",
                    help="per_upload: also measure every registry with the engine of this checkout (a git "
                         "worktree of an earlier commit), interleaved upload by upload with this one's")
    args = ap.parse_args()

    steps = {x.strip() for x in args.steps.split(",") if x.strip()}
    if steps - set(STEPS):
        ap.error(f"unknown steps: {', '.join(sorted(steps - set(STEPS)))}")
    if args.reuse:
        steps -= {"build", "retrain"}
    res: dict[str, Any] = {"sizes": {}}
    n_real = len([ln for ln in (args.dataset / "works.jsonl").read_text().splitlines() if ln.strip()])
    if "build" in steps:
        dirs = build(args.src, args.scratch, args.sizes, args.seed, cells=args.synthetic == "cells")
    else:
        dirs = {n: args.scratch / str(n) for n in sorted(args.sizes)}
        missing = [str(d) for d in dirs.values() if not (d / "features").is_dir()]
        if missing:
            ap.error(f"no registry built in {', '.join(missing)} (run the build step first)")
    for n, d in dirs.items() if "retrain" in steps else ():
        _log(f"retrain at {n} works")
        res["sizes"][str(n)] = {"retrain": _run(_retrain_child, str(d), args.load_threads)}
        _log(f"retrain at {n}: {res['sizes'][str(n)]['retrain']}")
    all_dirs = {n_real: args.src, **dirs}
    warm = [str(p) for p in _sample_uploads(args.dataset, args.warm, args.seed + 1)]
    for n in all_dirs:
        res["sizes"].setdefault(str(n), {})
    for n, d in all_dirs.items() if "memory" in steps else ():
        m = res["sizes"][str(n)]["memory"] = memory(d, args.processes, warm)
        _log(f"memory at {n}: {json.dumps(m)}")
    if "per_upload" in steps:
        paths = [str(p) for p in _sample_uploads(args.dataset, args.uploads, args.seed)]
        runs: dict[Any, tuple[Path, str]] = {n: (d, "") for n, d in all_dirs.items()}
        if args.base:
            runs |= {(n, "base"): (d, args.base) for n, d in all_dirs.items()}
        acc = per_upload(runs, paths)
        for n in all_dirs:
            res["sizes"][str(n)]["per_upload"] = _summary(acc[n])
            if args.base:
                res["sizes"][str(n)]["per_upload_base"] = _summary(acc[(n, "base")])
        base = statistics.median(acc[n_real]["total"])
        res["total_median_ratio"] = {str(n): round(statistics.median(acc[n]["total"]) / base, 2) for n in all_dirs}
        if args.base:
            b0 = statistics.median(acc[(n_real, "base")]["total"])
            res["total_median_ratio_base"] = {str(n): round(statistics.median(acc[(n, "base")]["total"]) / b0, 2)
                                              for n in all_dirs}
        _log(f"per upload: {json.dumps({n: res['sizes'][str(n)]['per_upload'] for n in all_dirs})}")
        _log(f"per upload: total median ratio {res['total_median_ratio']}")
    big = max(dirs)
    if "accuracy" in steps:
        rows = [json.loads(ln) for ln in (args.dataset / "uploads.jsonl").read_text().splitlines() if ln.strip()]
        every = [str(args.dataset / r["file"]) for r in rows]
        if args.accuracy_uploads:
            every = every[: args.accuracy_uploads]
        _log(f"accuracy: {len(every)} uploads, 200 vs {big} works")
        res["accuracy"] = {"registry": big, **accuracy(args.src, dirs[big], every, args.processes, n_real)}
        _log(f"accuracy: {res['accuracy']}")
    for n, d in all_dirs.items() if "registration" in steps else ():
        if n == n_real:
            continue  # registering into --from would change the harness's registry
        res["sizes"][str(n)]["registration"] = _run(_register_child, str(d))
        _log(f"registration at {n}: {res['sizes'][str(n)]['registration']}")
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if "per_upload" not in steps:
        return
    print(f"\n| stage (CPU ms per upload) | {' | '.join(f'{n} works median / p95' for n in all_dirs)} |")
    print("|---|" + "---|" * len(all_dirs))
    for key in ("per_upload", "per_upload_base") if args.base else ("per_upload",):
        if key == "per_upload_base":
            print(f"\nThe same uploads, the engine of {args.base}:\n")
        for k in [*STAGES, "phash", "pdq_only"]:
            cells = [f"{res['sizes'][str(n)][key][k]['median']} / {res['sizes'][str(n)][key][k]['p95']}"
                     for n in all_dirs]
            print(f"| {k} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
