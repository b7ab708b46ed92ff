"""The descriptor's score term on a split: how likely a copy is at each cosine, and its fitted slope (issue 18).

    ARTWATCH_DATA_DIR=/work/benchruns/dev/data python bench/sscd_term.py --dataset /work/benchdev/dev [--procs 2]

Analyses every upload with the engine of the data dir's settings (the default
configuration, as ``artwatch scan``) and keeps each candidate the descriptor
has a cosine for. A candidate is *alone* when the descriptor is its only
evidence (no local term, no PDQ). Prints, per cosine bin, how many alone
candidates there are, how many are copies, and the mean of the term's
probability there (a calibrated term has the two close). Then fits the slope
the way ``artwatch calibrate`` does (``matching.calibrate._fit_slope``: by
likelihood on the alone candidates, the crossing fixed), with the crossing of
the engine's current term: on all candidates and in two folds by work id
parity. The built-in ``ScoreModel.sscd`` is the folds' mean on the dev split.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import load_settings
from matching import build_engine
from matching.calibrate import _fit_slope
from matching.cli import _work_names
from matching.engine import Engine
from matching.features import limit_native_threads
from storage.db import make_engine, make_sessionmaker

_engine: Engine | None = None
_names: dict[int, str] = {}


def _init() -> None:
    global _engine, _names  # noqa: PLW0603 (one engine per pool process)
    limit_native_threads()
    settings = load_settings()
    _engine = build_engine(settings)
    _names = _work_names(make_sessionmaker(make_engine(settings.resolved_database_url())))


def _rows(job: tuple[str, list[str]]) -> list[tuple[float, int, bool, int]]:
    path, works = job
    assert _engine is not None
    out = []
    for c in _engine.analyse(Path(path).read_bytes(), name=path):
        if "sscd" in c.signals:
            alone = c.signals["local"] == 0.0 and c.signals["pdq"] == 0.0
            out.append((c.signals["sscd"], int(_names[c.work_id] in works), alone, c.work_id))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    files = {r["id"]: r["file"] for r in map(json.loads, (args.dataset / "uploads.jsonl").open(encoding="utf-8"))}
    jobs = [(str(args.dataset / files[t["id"]]), t["works"])
            for t in map(json.loads, (args.dataset / "truth.jsonl").open(encoding="utf-8"))]
    with mp.get_context("fork").Pool(args.procs, _init) as pool:
        rows = [r for part in pool.imap(_rows, jobs, chunksize=8) for r in part]
    _init()
    assert _engine is not None and _engine.model.sscd is not None
    b, a = _engine.model.sscd
    crossing = -b / a
    alone = [r for r in rows if r[2]]
    print(f"{len(rows)} descriptor candidates, {len(alone)} alone ({sum(r[1] for r in alone)} copies); "
          f"term in use ({b:.2f}, {a:.2f}), crossing {crossing:.4f}")
    edges = [-1.0, 0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 1.01]
    print("cosine bin | alone candidates | copies | mean term probability")
    for lo, hi in itertools.pairwise(edges):
        got = [r for r in alone if lo <= r[0] < hi]
        if got:
            mean_p = float(np.mean([_engine.model.sscd_prob(r[0]) for r in got]))
            print(f"[{lo:.2f}, {hi:.2f}) | {len(got)} | {sum(r[1] for r in got)} | {mean_p:.4f}")

    def slope(sel: list[tuple[float, int, bool, int]]) -> float:
        x = np.array([r[0] for r in sel], np.float64) - crossing
        return _fit_slope(x, np.array([r[1] for r in sel], np.float64))

    folds = [slope([r for r in alone if r[3] % 2 == k]) for k in (0, 1)]
    mean = float(np.mean(folds))
    print(f"slope with the crossing fixed: all {slope(alone):.2f}, folds {folds[0]:.2f} / {folds[1]:.2f}, "
          f"mean {mean:.2f} -> term ({-mean * crossing:.2f}, {mean:.2f})")


if __name__ == "__main__":
    main()
