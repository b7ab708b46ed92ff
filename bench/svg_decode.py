"""Median wall and CPU time of decoding a benign logo SVG at 1024 px, in one tree.

    PYTHONPATH=TREE python bench/svg_decode.py [RUNS]

CPU includes the renderer's child processes. Run it for the old and the new
tree in turn (several rounds, interleaved) and compare the medians.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    from matching.decode import decode_image
    from tests.hostile import LOGO_SVG

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    decode_image(LOGO_SVG)  # imports and first-use costs out of the figure
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = _cpu(), time.perf_counter()
        decode_image(LOGO_SVG)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    print(f"wall median {statistics.median(walls) * 1000:.1f} ms, cpu median {statistics.median(cpus) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
