"""Bytes and CPU of a registered work's file: descriptors zstd-compressed (today's
``matching.store.work_to_bytes``) against the plain npz written before.

    python bench/work_format.py DATA_DIR/features/works [--passes 3]

Every work file under the folder is read, then encoded both ways and each
encoding decoded again (``work_from_bytes``), ``--passes`` times; prints the
total bytes and the median CPU ms per work of each.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matching.features import StoredWork
from matching.store import work_from_bytes, work_to_bytes


def plain(w: StoredWork) -> bytes:
    """The work as the npz written before its descriptors were compressed."""
    buf = io.BytesIO()
    arrays = {"meta": np.array([w.work_id, w.owner_id, w.width, w.height], np.int64), "kind": np.array(w.kind),
              "pdq": w.pdq, "thumbs": w.thumbs}
    for tag, f in (("d", w.direct), ("m", w.mirrored)):
        arrays.update({f"{tag}_xy": f.xy, f"{tag}_scale": f.scale, f"{tag}_angle": f.angle, f"{tag}_desc": f.desc})
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("works", type=Path, help="a folder store's works/ directory")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    works = [work_from_bytes(p.read_bytes()) for p in sorted(args.works.glob("*.npz"))]
    clock = time.process_time
    for name, encode in (("plain npz", plain), ("descriptors zstd", work_to_bytes)):
        enc: list[float] = []
        dec: list[float] = []
        size = 0
        for i in range(args.passes):
            for w in works:
                t0 = clock()
                data = encode(w)
                t1 = clock()
                work_from_bytes(data)
                t2 = clock()
                enc.append((t1 - t0) * 1000)
                dec.append((t2 - t1) * 1000)
                size += len(data) if i == 0 else 0
        print(f"{name}: {len(works)} works, {size / 2**20:.1f} MiB, encode median {statistics.median(enc):.2f} ms, "
              f"decode median {statistics.median(dec):.2f} ms")


if __name__ == "__main__":
    main()
