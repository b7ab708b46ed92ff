"""CPU per upload of engine variants, measured interleaved in one process.

    python bench/speed_variants.py DATA_DIR --uploads 200 \\
        --variant "a320:matching.features.UPLOAD_AREA=320*240" \\
        --variant "a320k:matching.features.UPLOAD_AREA=320*240,matching.features.UPLOAD_MAX_KP=1100"

DATA_DIR holds a registry (``artwatch init`` and ``artwatch works import``).
Each variant sets module constants (Python expressions) before its turn; the
baseline is the code as it is. Every upload runs through
:meth:`Engine.analyse` (CLIP off) once per variant, the variants in turn and
in alternating order, so machine drift weighs on all alike. Prints the
median and mean CPU milliseconds per upload and each median as a ratio of
the baseline's. A quick way to compare settings before a full
``speed_matching.py`` run; it says nothing about accuracy.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed_matching import _sample_uploads  # the same upload sample as speed_matching.py


def _parse(spec: str) -> tuple[str, list[tuple[str, str]]]:
    name, _, sets = spec.partition(":")
    pairs = [tuple(s.split("=", 1)) for s in sets.split(",") if s]
    if not name or any(len(p) != 2 or "." not in p[0] for p in pairs):
        raise SystemExit(f"bad --variant {spec!r}: expected NAME:module.ATTR=expr[,module.ATTR=expr]")
    return name, [(a, b) for a, b in pairs]


class _Constants:
    """Sets module constants per variant and puts the originals back."""

    def __init__(self) -> None:
        self.original: dict[str, Any] = {}

    def apply(self, sets: list[tuple[str, str]]) -> None:
        for key, value in self.original.items():
            mod, attr = key.rsplit(".", 1)
            setattr(importlib.import_module(mod), attr, value)
        for key, expr in sets:
            mod, attr = key.rsplit(".", 1)
            m = importlib.import_module(mod)
            if not hasattr(m, attr):
                raise SystemExit(f"{key}: no such constant")
            self.original.setdefault(key, getattr(m, attr))
            setattr(m, attr, eval(expr, {}))  # a developer's own command line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--dataset", type=Path, default=Path("/work/benchdata/dev"))
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variant", action="append", default=[], type=_parse)
    args = ap.parse_args()

    from config.settings import load_settings
    from matching import build_engine

    engine = build_engine(load_settings(data_dir=args.data_dir, matching={"use_embedder": False}))
    if not engine.index.work_ids:
        raise SystemExit(f"{args.data_dir}: no registered works (run artwatch works import first)")
    uploads = [(p.read_bytes(), p.name) for p in _sample_uploads(args.dataset, args.uploads, args.seed)]
    variants = [("baseline", []), *args.variant]
    consts = _Constants()
    for _, sets in variants:  # warm-up: imports, compiled loops
        consts.apply(sets)
        for data, name in uploads[:5]:
            engine.analyse(data, name=name)
    ms: dict[str, list[float]] = {name: [] for name, _ in variants}
    for i, (data, name) in enumerate(uploads):
        for vname, sets in variants if i % 2 == 0 else variants[::-1]:
            consts.apply(sets)
            t = time.process_time()
            engine.analyse(data, name=name)
            ms[vname].append((time.process_time() - t) * 1000)
    consts.apply([])
    base = statistics.median(ms["baseline"])
    print(f"{len(uploads)} uploads, {len(engine.index.work_ids)} works, CPU ms per upload")
    print("| variant | median | mean | median / baseline |\n|---|---|---|---|")
    for vname, v in ms.items():
        med, mean = statistics.median(v), statistics.mean(v)
        print(f"| {vname} | {med:.1f} | {mean:.1f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
