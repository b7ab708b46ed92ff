"""Resident memory of engine processes holding one registry, per process and per node.

    python bench/memory_per_process.py --data-dir /work/benchruns/registration10k/data --processes 4

Starts ``--processes`` processes (spawned, as Celery's prefork children are
separate interpreters after fork) that each build the engine a worker builds
(``matching.build_engine`` with the embedder off) on the registry the
settings name: ``ARTWATCH_*`` variables choose the folder or the services
registry, ``--data-dir`` is each process's DATA_DIR (give ``--separate-dirs``
for one empty DATA_DIR per process, as on separate machines). Once all of them
have loaded it and analysed ``--queries`` demo uploads (so the postings
their searches touch are resident), the parent reads each child's ``/proc/PID/smaps_rollup``:

- RSS counts the pages a process maps, shared ones included;
- PSS divides each shared page among the processes mapping it, so the sum of
  the PSS values is what the node holds, shared pages counted once.

Prints one JSON object: the registry size, per-process load time, RSS, PSS
and private memory, and the node total.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def memory_rows(procs: list[Any], extra: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each process's RSS, PSS and private memory now (MiB), after its ``extra`` fields (keyed by pid)."""
    rows = []
    for p in procs:
        assert p.pid is not None
        r = _rollup(p.pid)
        rows.append({**extra[p.pid], "rss_mib": round(r["Rss"] / 2**20, 1), "pss_mib": round(r["Pss"] / 2**20, 1),
                     "private_mib": round((r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)) / 2**20, 1)})
    return rows


def _child(data_dir: str, queries: int, ready: Any, done: Any, results: Any) -> None:
    import io

    from config.settings import load_settings
    from matching import build_engine
    from workers.demo import painting, photo

    t = time.perf_counter()
    settings = load_settings(data_dir=data_dir, matching={"use_embedder": False})
    engine = build_engine(settings)
    engine.index.refresh()
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(queries):  # touch the postings a worker's searches touch
        buf = io.BytesIO()
        (painting(i) if i % 2 else photo(i)).save(buf, "JPEG", quality=90)
        engine.analyse(buf.getvalue())
    results.put({"pid": os.getpid(), "load_s": round(load_s, 2), "works": len(engine.index.work_ids),
                 "queries_s": round(time.perf_counter() - t, 2)})
    ready.release()
    done.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--queries", type=int, default=50, help="uploads each process analyses before measuring")
    ap.add_argument("--separate-dirs", action="store_true",
                    help="one empty DATA_DIR per process under --data-dir (services registry only)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    ready, done, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = []
    for i in range(args.processes):
        d = args.data_dir / f"node{i}" if args.separate_dirs else args.data_dir
        d.mkdir(parents=True, exist_ok=True)
        p = ctx.Process(target=_child, args=(str(d), args.queries, ready, done, results))
        p.start()
        procs.append(p)
    for _ in procs:
        ready.acquire()
    loaded = {r["pid"]: r for r in (results.get() for _ in procs)}
    rows = memory_rows(procs, loaded)
    done.set()
    for p in procs:
        p.join()
    print(json.dumps({"processes": rows, "node_pss_mib": round(sum(r["pss_mib"] for r in rows), 1),
                      "node_rss_sum_mib": round(sum(r["rss_mib"] for r in rows), 1)}, indent=1))


if __name__ == "__main__":
    main()
