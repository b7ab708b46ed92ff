"""Time to render a DMCA notice with the bundled templates: 500 items and 2 items.

    PYTHONPATH=TREE python bench/notice_render.py

Run it for the old and the new tree in one sitting and compare.
"""

from __future__ import annotations

import dataclasses
import time


def main() -> None:
    from notices.content import sample_content
    from notices.render import render_notice

    big = sample_content("dmca")
    big = dataclasses.replace(big, items=big.items * 250)
    render_notice(big)
    t0 = time.perf_counter()
    for _ in range(10):
        render_notice(big)
    print(f"{len(big.items)}-item notice: {(time.perf_counter() - t0) / 10 * 1000:.1f} ms per render")
    small = sample_content("dmca")
    t0 = time.perf_counter()
    for _ in range(100):
        render_notice(small)
    print(f"{len(small.items)}-item notice: {(time.perf_counter() - t0) / 100 * 1000:.2f} ms per render")


if __name__ == "__main__":
    main()
