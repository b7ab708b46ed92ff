"""Where the true pairs a predictions file misses are lost, stage by stage (issue 18).

    ARTWATCH_DATA_DIR=/work/benchruns/dev/data python bench/missed_pairs.py \\
        --dataset /work/benchdev/dev --preds /work/benchruns/dev/none.jsonl [--category partial]

Builds the engine of the data dir's settings with the embedder and descriptor off
(as ``artwatch scan --no-embedder``) and, for every true pair of ``--category``
that the predictions do not match, replays the local-feature stages and names the
first that loses it:

- ``not searched``: the work's images are not among the ``Engine.search_top``
  best-voted ones (with what the work's images alone would give: the
  weak-consistency peak and the tentative correspondences);
- ``peak < 4``: searched, but its consistency peak is too low to verify;
- ``not verified``: ranked past ``Engine.verify_top`` by consistency;
- ``no fit``, ``implausible``, ``inliers < 4``: verification gave nothing usable;
- ``scored low``: verified, and the score stayed below the threshold.

Prints one line per lost pair, then the count per stage.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import load_settings
from matching import build_engine
from matching.cli import _without_embedder, _work_names
from matching.decode import decode_image
from matching.engine import UPLOAD_MAX_SIDE, _significance
from matching.features import extract_features
from storage.db import make_engine, make_sessionmaker


def _stage(engine: Any, data: bytes, name: str, wid: int) -> tuple[str, str]:
    img = decode_image(data, name=name, max_side=UPLOAD_MAX_SIDE)
    q = extract_features(np.asarray(img.rgb), balanced=True)
    found = engine.index.search(q, top=engine.search_top)
    ranked = sorted(((_significance(peak, c.q_xy.shape[0]), c.work_id) for c in found
                     for peak in [c.consistent()[0]] if peak >= 4), key=lambda r: -r[0])
    if not any(c.work_id == wid for c in found):
        alone = engine.index.search(q, top=engine.search_top, work_ids=[wid])
        return "not searched", (f"alone: peaks {[c.consistent()[0] for c in alone]}, "
                                f"tentative {[c.q_xy.shape[0] for c in alone]}")
    a = engine.analyse_decoded(img)
    v = a.verifications.get(wid)
    detail = ""
    if v is not None:
        detail = f"inliers {v.inliers} of {v.tentative}, coverage {v.coverage:.3f}, dense {a.dense.get(wid)}"
    at = [i for i, r in enumerate(ranked) if r[1] == wid]
    if not at:
        return "peak < 4", detail
    if at[0] >= engine.verify_top:
        return "not verified", f"consistency rank {at[0]}"
    if v is None:
        return "no fit", detail
    if not v.plausible:
        return "implausible", detail
    if v.inliers < 4:
        return "inliers < 4", detail
    return "scored low", detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--preds", type=Path, required=True)
    ap.add_argument("--category", default="partial")
    args = ap.parse_args()
    settings = load_settings()
    engine = build_engine(_without_embedder(settings))
    names = _work_names(make_sessionmaker(make_engine(settings.resolved_database_url())))
    wid_of = {v: k for k, v in names.items()}
    matched = set()
    for line in args.preds.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["match"]:
            matched.add((r["upload"], r["work"]))
    files = {r["id"]: r["file"] for r in map(json.loads, (args.dataset / "uploads.jsonl").open(encoding="utf-8"))}
    stages: collections.Counter[str] = collections.Counter()
    for t in map(json.loads, (args.dataset / "truth.jsonl").open(encoding="utf-8")):
        if t["category"] != args.category:
            continue
        for work in t["works"]:
            if (t["id"], work) in matched:
                continue
            stage, detail = _stage(engine, (args.dataset / files[t["id"]]).read_bytes(), files[t["id"]], wid_of[work])
            stages[stage] += 1
            print(f"{t['id']} {work} {t['transform']}: {stage} ({detail})")
    print(", ".join(f"{k} {n}" for k, n in stages.most_common()))


if __name__ == "__main__":
    main()
