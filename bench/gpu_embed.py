"""JPEG bytes -> stored unit vectors: the GPU worker's batched path against the naive loop.

One run, one table: for CLIP (random weights, ``--clip-model``, ViT-B-32 by
default) and both SSCD models, images per second of

- naive: Pillow decode (draft mode) + one ``embed([image])`` call per image;
- decode: the batched path's first stage alone (``workers.batching.decode_and_fit``:
  nvJPEG through torchvision on CUDA, the project's decoder otherwise, then the
  resize to the model's input on the device);
- forward: the model alone on already-fitted batches (fp16 autocast for CLIP on CUDA;
  SSCD through ONNX Runtime, its CUDA provider where installed);
- end to end: ``workers.batching.bytes_to_vectors`` (decode + resize + forward + the
  vectors back on the host as float32), and its ratio to naive, measured in the same run.

Plus, with ``--sscd-cpu``, SSCD on the CPU in ms per image (one ONNX Runtime thread,
one image at a time, prepared input), distilled vs full model at sides 288 and 224.

The images are synthetic JPEGs (smooth colour fields, shapes, text; quality 90) of
``--width`` x ``--height``, drawn here: no files, no network. On a machine with a GPU:

    PYTHONPATH=. python bench/gpu_embed.py --n 8192 --batch 256 --naive-n 512

On a CPU (small counts; the figures in docs/benchmarks.md):

    PYTHONPATH=. nice python bench/gpu_embed.py --device cpu --n 64 --batch 32 --naive-n 16 --sscd-cpu
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matching.signals.embedder import Embedder
from workers.batching import bytes_to_vectors, decode_and_fit, pil_decode


def picture(seed: int, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        colour = tuple(int(x) for x in rng.integers(0, 256, 3))
        cv2.circle(a, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(10, h // 4)), colour, -1)
    cv2.putText(a, f"W{seed}", (w // 6, h // 2), cv2.FONT_HERSHEY_SIMPLEX, h / 200, (255, 255, 255), 3)
    return a


def jpegs(n: int, w: int, h: int) -> list[bytes]:
    base = [picture(i, w, h) for i in range(min(n, 64))]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(base[i % len(base)]).save(buf, "JPEG", quality=90 - (i % 7))  # distinct bytes
        out.append(buf.getvalue())
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def build(name: str, device: str, batch: int, clip_model: str) -> Embedder:
    if name == "clip":
        from matching.signals.clip import ClipEmbedder

        return ClipEmbedder(clip_model, "", device=device, batch_size=batch)
    from matching.signals.sscd import SscdEmbedder

    return SscdEmbedder(name, side=288, device="auto" if device != "cpu" else "cpu", batch_size=batch)


def measure(emb: Embedder, datas: list[bytes], naive_n: int, batch: int) -> dict[str, Any]:
    dev = emb.device
    warm = datas[: min(len(datas), batch)]
    bytes_to_vectors(emb, warm, batch_size=batch)  # load kernels, cudnn autotune, ORT arena
    emb.embed([pil_decode(warm[0], emb.geometry.size)])

    naive = datas[:naive_n]
    t_naive = timed(lambda: [emb.embed([pil_decode(d, emb.geometry.size)]) for d in naive], dev)

    chunks = [datas[i : i + batch] for i in range(0, len(datas), batch)]
    fitted: list[Any] = []
    t_decode = timed(lambda: fitted.extend(decode_and_fit(emb, c) for c in chunks), dev)
    t_forward = timed(lambda: [emb.forward_tensor(b) for f in fitted for _, b in f.groups], dev)
    got: list[Any] = []
    t_e2e = timed(lambda: got.append(bytes_to_vectors(emb, datas, batch_size=batch)), dev)
    vb = got[0]
    assert vb.vectors.shape[0] == len(datas) and not any(vb.errors)
    n = len(datas)
    return {
        "model": getattr(emb, "model_name", emb.name), "device": dev, "n": n, "batch": batch,
        "naive_per_s": naive_n / t_naive, "decode_per_s": n / t_decode, "forward_per_s": n / t_forward,
        "e2e_per_s": n / t_e2e, "e2e_vs_naive": (n / t_e2e) / (naive_n / t_naive),
        "device_decoded": vb.device_decoded,
    }


def sscd_cpu_ms(n: int, w: int, h: int) -> list[dict[str, Any]]:
    from matching.signals.sscd import SscdEmbedder

    pics = [picture(i, w, h) for i in range(n)]
    rows = []
    for model in ("sscd_distilled", "sscd"):
        for side in (288, 224):
            emb = SscdEmbedder(model, side=side, threads=1)
            prepared = [emb.prepare(p) for p in pics]
            emb.forward(prepared[0])
            times = []
            for p in prepared:
                t0 = time.perf_counter()
                emb.forward(p)
                times.append(time.perf_counter() - t0)
            rows.append({"model": model, "side": side, "ms_per_image": 1000 * float(np.median(times)), "n": n})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA if visible), cuda or cpu")
    ap.add_argument("--models", default="clip,sscd_distilled,sscd")
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=8192, help="images in the batched runs")
    ap.add_argument("--naive-n", type=int, default=512, help="images in the naive loop")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--sscd-cpu", action="store_true", help="also SSCD CPU ms per image, both models, sides 288/224")
    ap.add_argument("--sscd-cpu-n", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    cv2.setNumThreads(1)
    datas = jpegs(args.n, args.width, args.height)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
    print(f"device {device} (GPU: {gpu}); {args.n} JPEGs {args.width}x{args.height}, batch {args.batch}, "
          f"naive loop over {args.naive_n}; torch threads {torch.get_num_threads()}")
    rows = []
    for name in args.models.split(","):
        emb = build(name, device, args.batch, args.clip_model)
        rows.append(measure(emb, datas, min(args.naive_n, args.n), args.batch))
    print("\n| model | device | naive img/s | decode img/s | forward img/s | end to end img/s | e2e / naive |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['device']} | {r['naive_per_s']:.1f} | {r['decode_per_s']:.1f} | "
              f"{r['forward_per_s']:.1f} | {r['e2e_per_s']:.1f} | {r['e2e_vs_naive']:.2f}x |")
    cpu_rows = []
    if args.sscd_cpu:
        cpu_rows = sscd_cpu_ms(args.sscd_cpu_n, args.width, args.height)
        print("\n| SSCD on the CPU (1 thread) | side | ms per image |")
        print("| --- | ---: | ---: |")
        for r in cpu_rows:
            print(f"| {r['model']} | {r['side']} | {r['ms_per_image']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "sscd_cpu": cpu_rows, "gpu": gpu}, indent=1))


if __name__ == "__main__":
    main()
