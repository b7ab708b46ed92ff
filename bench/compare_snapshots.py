"""Whether two registries' current postings snapshots hold the same arrays.

    python bench/compare_snapshots.py DATA_DIR_A DATA_DIR_B

Each data dir's folder feature store (``DATA_DIR/features``) names its current
snapshot in one pointer file per vocabulary; this reads every array of both
(memory-mapped) and prints, per array name, whether they are equal
(``np.array_equal``, dtype and shape included). The vocabulary versions may
differ (a retrain names a new one); the arrays are what is compared. Exits 1 when
any array differs or is missing on one side. Used to check that a format-2
snapshot converted by ``matching.postings.from_format2`` equals what a retrain
under the current code writes (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _arrays(data_dir: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    snaps = data_dir / "features" / "snapshots"
    pointers = sorted(snaps.glob("*.json"))
    if len(pointers) != 1:
        raise SystemExit(f"{snaps}: expected one snapshot pointer, found {len(pointers)}")
    meta = json.loads(pointers[0].read_text(encoding="utf-8"))
    folder = snaps / str(meta["dir"])
    return meta, {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in sorted(folder.glob("*.npy"))}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    (meta_a, a), (meta_b, b) = _arrays(Path(sys.argv[1])), _arrays(Path(sys.argv[2]))
    for meta in (meta_a, meta_b):
        print(f"format {meta.get('format')}, {meta.get('works')} works, {meta.get('postings')} postings, "
              f"vocabulary {meta.get('vocab')}")
    same = True
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'the first' if name in a else 'the second'}")
            same = False
            continue
        eq = a[name].dtype == b[name].dtype and bool(np.array_equal(a[name], b[name]))
        same &= eq
        print(f"{name}: {'equal' if eq else 'DIFFERENT'} ({a[name].dtype}, {a[name].shape})")
    print("all arrays equal" if same else "the snapshots differ")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
