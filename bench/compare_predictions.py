"""Two predictions files of ``artwatch scan`` compared pair by pair.

    python bench/compare_predictions.py BEFORE.jsonl AFTER.jsonl [--truth TRUTH.jsonl]

Prints every (upload, work) pair whose decision differs (with its scores, and with
``--truth`` its category, transform and whether it is a true pair), how many pairs
both files scored and how many of those moved (at all, and by more than 0.01), and
how many pairs are candidates in one file only, with the highest score among them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["upload"], r["work"])] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--truth", type=Path, default=None)
    args = ap.parse_args()
    a, b = _load(args.before), _load(args.after)
    truth = {}
    if args.truth:
        truth = {r["id"]: r for r in (json.loads(ln) for ln in args.truth.read_text().splitlines() if ln.strip())}
    for k in sorted(set(a) | set(b)):
        ma, mb = bool(a.get(k, {}).get("match")), bool(b.get(k, {}).get("match"))
        if ma != mb:
            t = truth.get(k[0], {})
            about = f", {t.get('category')} {t.get('transform')}, true pair {k[1] in t.get('works', [])}" if t else ""
            scores = f"{a.get(k, {}).get('score')} -> {b.get(k, {}).get('score')}"
            print(f"{k[0]} {k[1]}: {scores}, match {ma} -> {mb}{about}")
    both = set(a) & set(b)
    moved = [abs(float(a[k]["score"]) - float(b[k]["score"])) for k in both]
    one = set(a) ^ set(b)
    top = max((float((a.get(k) or b[k])["score"]) for k in one), default=0.0)
    print(f"scored in both: {len(both)}, moved {sum(m > 0 for m in moved)}, by more than 0.01 "
          f"{sum(m > 0.01 for m in moved)}; candidates in one file only: {len(one)}, highest score {top:.6f}")


if __name__ == "__main__":
    main()
