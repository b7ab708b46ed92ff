"""How deep the sparse words must be searched to hold what the postings verify.

    ARTWATCH_DATA_DIR=... ARTWATCH_MATCHING__CANDIDATES=sparse \\
        python bench/sparse_candidates.py MANIFEST [--every 5] [--depths 16,48,96,192,400]

Runs on a data dir registered with ``matching.candidates = "sparse"`` (so the
words are in the index). For each upload it analyses with the postings
(today's candidates) and records the works that come out as matches, then
ranks the work images by the sparse search alone and reports, per depth K,
the share of those matched works whose images rank in the top K. It never
reads the truth: the reference is the postings engine's own decisions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from config.settings import load_settings
from matching import build_engine
from matching.decode import decode_image
from matching.engine import UPLOAD_MAX_SIDE
from matching.features import extract_features
from matching.sparse_words import WORDS_VECTOR, query_vector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--depths", default="16,48,96,192,400")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    settings = load_settings()
    matching = settings.matching.model_copy(update={"use_embedder": False, "candidates": "sparse"})
    engine = build_engine(settings.model_copy(update={"matching": matching}))
    assert engine.sparse is not None
    engine.candidates = "postings"
    engine.index.refresh()
    vocab = engine.index.vocab
    assert vocab is not None
    ups = [json.loads(ln) for ln in args.manifest.read_text().splitlines() if ln][:: args.every]
    found = dict.fromkeys(depths, 0)
    matched = 0
    ranks: list[int] = []
    t = time.time()
    for u in ups:
        img = decode_image((args.manifest.parent / u["file"]).read_bytes(), max_side=UPLOAD_MAX_SIDE)
        a = engine.analyse_decoded(img)
        wanted = {c.work_id for c in engine.score(a, img) if c.match and "inliers" in c.signals}
        if not wanted:
            continue
        q = extract_features(np.asarray(img.rgb), balanced=True)
        words = vocab.assign(q.desc, n_coarse=engine.index.n_coarse, n_fine=engine.index.n_fine,
                             n_sub=engine.index.n_sub)[2]
        hits = engine.sparse.index.search_sparse(WORDS_VECTOR.name, query_vector(words), max(depths))
        first: dict[int, int] = {}
        for r, h in enumerate(hits):
            first.setdefault(h.work_id, r)
        for wid in wanted:
            matched += 1
            r = first.get(wid, 10**9)
            ranks.append(r)
            for d in depths:
                found[d] += int(r < d)
    print(json.dumps({
        "uploads": len(ups), "matched_pairs": matched, "points": engine.sparse.index.count(),
        "recall_at": {str(d): round(found[d] / max(1, matched), 4) for d in depths},
        "missing_beyond_max_depth": sum(r >= max(depths) for r in ranks),
        "wall_s": round(time.time() - t, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
