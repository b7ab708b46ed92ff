"""Wall time of `artwatch --help` and `artwatch works list`, two source trees side by side.

    python bench/cli_startup.py --before /tmp/old-tree --after . [--rounds 7]

Each tree runs as `python -m workers ...` with PYTHONPATH set to it, on a data
folder of its own that this script initialises first (the trees may need
different schema revisions). Rounds interleave the trees, so load on the
machine falls on both alike; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {"--help": ["--help"], "works list": ["works", "list"]}


def _run(tree: Path, data: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "ARTWATCH_DATA_DIR": str(data)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workers", *args], cwd=tree, env=env, capture_output=True, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        data = {name: Path(tmp) / name for name in trees}
        for name, tree in trees.items():
            _run(tree, data[name], ["init"])
        times: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in COMMANDS}
        for _ in range(a.rounds):
            for name, tree in trees.items():
                for cmd, args in COMMANDS.items():
                    times[(name, cmd)].append(_run(tree, data[name], args))
    for cmd in COMMANDS:
        before = statistics.median(times[("before", cmd)])
        after = statistics.median(times[("after", cmd)])
        print(f"{cmd}: before {before:.2f} s, after {after:.2f} s, ratio {after / before:.2f}")


if __name__ == "__main__":
    main()
