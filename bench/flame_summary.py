"""Where a py-spy profile's samples go: the functions holding the most samples,
inclusive (anywhere on the stack) and exclusive (the innermost frame).

    py-spy record --subprocesses -r 20 -f raw -o retrain.raw -- python bench/registry_scale.py ...
    python bench/flame_summary.py retrain.raw [--top 25]

Reads py-spy's ``raw`` format (one collapsed stack per line, then its sample
count) and prints percentages of all samples, by function and file.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def _name(frame: str) -> str:
    func, _, where = frame.partition(" (")
    return f"{func} {where.split(':')[0].rsplit('/', 1)[-1]}".strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    total = 0
    for line in args.raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        exclusive[frames[-1]] += n
    print(f"{total} samples")
    for title, counts in (("inclusive", inclusive), ("exclusive", exclusive)):
        print(f"-- {title}")
        for f, n in counts.most_common(args.top):
            print(f"{100 * n / max(1, total):6.1f} %  {f}")


if __name__ == "__main__":
    main()
