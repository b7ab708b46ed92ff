"""Worker throughput: end to end, per stage, and CLIP batched against a naive loop.

    python bench/throughput.py e2e   [--uploads 40] [--concurrency 2]
    python bench/throughput.py stages [--uploads 40]
    python bench/throughput.py clip  [--device auto] [--images 128] [--batch 32] [--threads 4]

``e2e``: a LocalSite (the crawler's Mastodon-compatible server on 127.0.0.1)
holds ``--uploads`` images (one in four a transformed copy of a registered
work); a private redis-server, SQLite and one real ``artwatch worker --role
cpu`` process run crawl -> fetch -> analyse; uploads/second is counted from
queueing the crawl to the last upload analysed.

``stages``: the same images analysed in this process, one at a time, timing
decode, PDQ, local features, index search + verification, CLIP embedding
(batched, per image) and the database writes (upsert + commit on SQLite).

``clip``: open_clip ViT-B-32 images/second from JPEG bytes (decode
included): the project's path (:class:`workers.batching.BatchedClip`: decode
and crop on CPU threads overlapping batched inference, uint8 to the device,
autocast on CUDA) against a naive loop (Pillow full decode, open_clip's own
preprocessing, one image per forward pass). Random weights: speed only.
When open_clip is not installed (a bare GPU machine) a structurally identical
ViT-B/32 image tower defined below is used instead. Prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def _jpeg(img: Any, q: int = 85) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=q)
    return buf.getvalue()


def make_images(n: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``n`` JPEGs drawn by code (cycled from at most 64 distinct ones)."""
    from workers.demo import photo

    distinct = [_jpeg(photo(1000 + i, size)) for i in range(min(n, 64))]
    return [distinct[i % len(distinct)] for i in range(n)]


# ------------------------------------------------------------------ CLIP


def _vit_b32() -> Any:
    """ViT-B/32 image tower (width 768, 12 layers, 12 heads, patch 32, out 512)
    for machines without open_clip; the same FLOPs as open_clip's."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int, h: int) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, h, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.ln_1(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class Visual(nn.Module):
        image_size = 224
        output_dim = 512

        def __init__(self) -> None:
            super().__init__()
            d = 768
            self.conv1 = nn.Conv2d(3, d, 32, 32, bias=False)
            self.cls = nn.Parameter(torch.zeros(d))
            self.pos = nn.Parameter(torch.randn(50, d) * 0.01)
            self.ln_pre, self.ln_post = nn.LayerNorm(d), nn.LayerNorm(d)
            self.blocks = nn.Sequential(*[Block(d, 12) for _ in range(12)])
            self.proj = nn.Parameter(torch.randn(d, 512) * d ** -0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv1(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1).to(x.dtype), x], 1) + self.pos.to(x.dtype)
            x = self.blocks(self.ln_pre(x))
            return self.ln_post(x[:, 0]) @ self.proj

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = Visual()

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    return Model()


def _load_model(device: str) -> tuple[Any, Any, str]:
    """(model, naive preprocess, which) on ``device``."""
    try:
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, device=device)
        return model.eval(), preprocess, "open_clip ViT-B-32"
    except ImportError:
        import torch
        from PIL import Image

        from workers.batching import CLIP_MEAN, CLIP_STD

        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)

        def preprocess(im: Any) -> Any:  # Resize(224, bicubic) + CenterCrop + ToTensor + Normalize
            w, h = im.size
            s = 224 / min(w, h)
            im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.Resampling.BICUBIC)
            left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
            im = im.crop((left, top, left + 224, top + 224))
            t = torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)
            return (t - mean) / std

        return _vit_b32().to(device).eval(), preprocess, "built-in ViT-B/32 (open_clip not installed)"


def _prepare_one(data: bytes, size: int) -> np.ndarray:
    from workers.batching import preprocess_rgb, project_decode

    try:
        return preprocess_rgb(project_decode(data, size), size)
    except ImportError:  # bare machine
        from workers.batching import pil_decode

        return preprocess_rgb(pil_decode(data, size), size)


def clip_bench(device: str, n: int, batch: int, threads: int, naive_n: int, dtype: str = "float16") -> dict[str, Any]:
    import torch
    from PIL import Image

    from matching.signals import resolve_device
    from workers.batching import BatchedClip, pil_decode

    dev = resolve_device(device)
    model, preprocess, which = _load_model(dev)
    datas = make_images(max(n, naive_n))
    try:
        from workers.batching import project_decode

        project_decode(datas[0], 224)
        decode = project_decode
    except ImportError:  # bare machine: the project's decoder needs its extras
        decode = pil_decode
    clip = BatchedClip(model, device=dev, dtype=dtype, max_batch=batch, max_wait_s=0.005, image_size=224,
                       decode=decode)
    autocast = clip.autocast

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def naive(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            x = preprocess(im.convert("RGB")).unsqueeze(0).to(dev)
        with torch.inference_mode():
            if autocast is not None:
                with torch.autocast(device_type="cuda", dtype=autocast):
                    f = model.encode_image(x)
            else:
                f = model.encode_image(x)
        return torch.nn.functional.normalize(f.float(), dim=-1).cpu().numpy()[0]

    # warm-up (CUDA kernels, allocator, thread pool)
    for d in datas[:4]:
        naive(d)
    def run(items: list[bytes]) -> None:
        # CPU threads decode and crop, then hand the crop to the batcher and
        # move on (in the worker each in-flight task is one such thread).
        with ThreadPoolExecutor(threads) as pool:
            futures = list(pool.map(lambda d: clip.batcher.submit(clip.prepare(d)), items))
        for f in futures:
            f.result()

    run(datas[: 2 * batch])
    sync()
    t0 = time.perf_counter()
    run(datas[:n])
    sync()
    t_batched = time.perf_counter() - t0
    stats = clip.batcher.stats
    sizes = stats.sizes[-max(1, n // batch):]
    t0 = time.perf_counter()
    for d in datas[:naive_n]:
        naive(d)
    sync()
    t_naive = time.perf_counter() - t0
    # Where the batched time goes: the same images through each half alone.
    # Decode + crop on the same threads, no GPU ...
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        crops = list(pool.map(clip.prepare, datas[:n]))
    t_prepare = time.perf_counter() - t0
    # ... the same decode + crop spread over processes instead (no GIL) ...
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(threads) as procs:
        list(procs.map(_prepare_one, datas[:threads], [clip.image_size] * threads))  # start-up
        t0 = time.perf_counter()
        list(procs.map(_prepare_one, datas[:n], [clip.image_size] * n, chunksize=16))
        t_prepare_procs = time.perf_counter() - t0
    # ... and the forward pass alone (upload, normalise, encode, download) on
    # ready crops in full batches, on one thread as the batcher runs it.
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        clip.forward(crops[i:i + batch])
    sync()
    t_forward = time.perf_counter() - t0
    clip.close()
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": name, "model": which, "dtype": "float32" if autocast is None else dtype,
        "batched_images": n, "batched_s": t_batched, "batched_ips": n / t_batched,
        "naive_images": naive_n, "naive_s": t_naive, "naive_ips": naive_n / t_naive,
        "speedup": (n / t_batched) / (naive_n / t_naive), "batch": batch, "threads": threads,
        "prepare_ips": n / t_prepare, "prepare_procs_ips": n / t_prepare_procs, "forward_ips": n / t_forward,
        "mean_batch": float(np.mean(sizes)) if sizes else 0.0, "torch": torch.__version__,
    }


def print_clip(r: dict[str, Any]) -> None:
    print(f"ViT-B-32 images/second from JPEG bytes, decode included -- {r['device']}, {r['model']}, "
          f"{r['dtype']}, torch {r['torch']}")
    print(f"{'path':<44}{'images':>8}{'seconds':>10}{'images/s':>10}{'ratio':>8}")
    print(f"{'naive loop (1 image per forward)':<44}{r['naive_images']:>8}{r['naive_s']:>10.2f}"
          f"{r['naive_ips']:>10.1f}{1.0:>8.2f}")
    label = f"batched (max {r['batch']}, {r['threads']} decode threads)"
    print(f"{label:<44}{r['batched_images']:>8}{r['batched_s']:>10.2f}{r['batched_ips']:>10.1f}"
          f"{r['speedup']:>8.2f}")
    print(f"mean batch size {r['mean_batch']:.1f}")
    if "prepare_ips" in r:
        print(f"the halves alone: decode + crop on {r['threads']} threads {r['prepare_ips']:.1f} images/s, "
              f"on {r['threads']} processes {r['prepare_procs_ips']:.1f} images/s; "
              f"forward pass on ready crops {r['forward_ips']:.1f} images/s")


# ------------------------------------------------------------------ stages


def _corpus(n: int) -> tuple[bytes, list[tuple[bytes, bool]]]:
    """The registered work, and ``n`` uploads (every fourth a copy of it)."""
    from workers.demo import painting, photo

    work = painting(314)
    out: list[tuple[bytes, bool]] = []
    boxes = [(60, 40, 700, 540), (0, 0, 640, 480), (100, 80, 768, 576), (30, 30, 600, 500)]
    for i in range(n):
        if i % 4 == 0:
            b = boxes[(i // 4) % 4]
            out.append((_jpeg(work.crop(b).resize((512 - (i % 7) * 8, 400 - (i % 5) * 6)), 80 - i % 10), True))
        else:
            out.append((_jpeg(photo(5000 + i), 85), False))
    return _jpeg(work, 95), out


def stages_bench(n: int, with_clip: bool = True) -> dict[str, Any]:
    from sqlalchemy import select

    from config.settings import load_settings
    from matching import build_engine, decode_image
    from matching.engine import UPLOAD_MAX_SIDE
    from registry.service import ensure_owner, record_matches, register_work
    from storage.blobs import FolderBlobStore
    from storage.db import make_engine, make_sessionmaker, session_scope
    from storage.models import Base, Upload, UploadStatus

    tmp = Path(tempfile.mkdtemp(prefix="aw-bench-"))
    settings = load_settings(data_dir=tmp)
    engine = build_engine(settings)
    db = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(db)
    sessions = make_sessionmaker(db)
    blobs = FolderBlobStore(tmp / "blobs")
    work, uploads = _corpus(n)
    with session_scope(sessions) as s:
        owner = ensure_owner(s, email="bench@example.com")
        register_work(s, blobs, engine, owner_id=owner.id, data=work, filename="w.jpg")
        for i, (data, _) in enumerate(uploads):
            s.add(Upload(canonical_url=f"https://site.example/{i}.jpg", image_url=f"https://site.example/{i}.jpg",
                         blob_sha256=blobs.put(data), status=UploadStatus.PENDING))
    t: dict[str, float] = {k: 0.0 for k in ("decode", "pdq", "features", "search", "verify", "database")}
    matched = 0
    wall0 = time.perf_counter()
    for i, (data, _) in enumerate(uploads):
        c0 = time.perf_counter()
        img = decode_image(data, max_side=UPLOAD_MAX_SIDE)
        t["decode"] += time.perf_counter() - c0
        timings: dict[str, float] = {}
        a = engine.analyse_decoded(img, timings=timings)
        for k in ("pdq", "features", "search", "verify"):
            t[k] += timings[k]
        cands = engine.score(a, img)
        c0 = time.perf_counter()
        with session_scope(sessions) as s:
            up = s.scalar(select(Upload).where(Upload.canonical_url == f"https://site.example/{i}.jpg"))
            assert up is not None
            matched += len(record_matches(s, up, cands))
            up.status = UploadStatus.ANALYSED
        t["database"] += time.perf_counter() - c0
    wall = time.perf_counter() - wall0
    out: dict[str, Any] = {"uploads": n, "matches": matched, "cpu_wall_s": wall, "stages_ms": {}}
    for k, v in t.items():
        out["stages_ms"][k] = 1000 * v / n
    if with_clip:
        from workers.batching import BatchedClip

        clip = BatchedClip.load("ViT-B-32", "", device="cpu", max_batch=32, max_wait_s=0.01)
        datas = [d for d, _ in uploads]
        clip.embed_bytes(datas[0])
        c0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            futures = list(pool.map(lambda d: clip.batcher.submit(clip.prepare(d)), datas))
        for f in futures:
            f.result()
        out["stages_ms"]["embedding (batched, CPU)"] = 1000 * (time.perf_counter() - c0) / n
        clip.close()
    db.dispose()
    return out


# ------------------------------------------------------------------ e2e


def e2e_bench(n: int, concurrency: int) -> dict[str, Any]:
    import socket

    import redis
    from alembic import command
    from sqlalchemy import func, select

    from config.settings import load_settings
    from crawler.localsite import LocalSite
    from matching import build_engine
    from registry.service import ensure_owner, register_work
    from storage.blobs import FolderBlobStore
    from storage.db import make_engine, make_sessionmaker, session_scope
    from storage.models import Base, Match, Source, Upload, UploadStatus
    from workers.migrate import alembic_config

    tmp = Path(tempfile.mkdtemp(prefix="aw-e2e-"))
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    rs = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTWATCH_")}
    env.update({
        "ARTWATCH_DATA_DIR": str(tmp / "data"), "ARTWATCH_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "ARTWATCH_MATCHING__USE_EMBEDDER": "false", "ARTWATCH_MATCHING__CLIP_PRETRAINED": "",
        "ARTWATCH_MATCHING__DESCRIPTOR": "",  # as when the figures in docs/benchmarks.md were taken
        "ARTWATCH_CRAWLER__ALLOW_INTERNAL": '["127.0.0.1"]', "ARTWATCH_CRAWLER__REQUESTS_PER_SECOND": "1000",
        "ARTWATCH_CRAWLER__MAX_CONCURRENCY_PER_HOST": "16", "ARTWATCH_WEB__SECRET_KEY": "bench",
    })
    os.environ.update(env)
    settings = load_settings()
    settings.data_dir.mkdir(parents=True)
    db = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(db)
    with db.begin() as conn:
        cfg = alembic_config(str(db.url))
        cfg.attributes["connection"] = conn
        command.stamp(cfg, "head")
    sessions = make_sessionmaker(db)
    work, uploads = _corpus(n)
    site = LocalSite().start()
    for data, _ in uploads:
        site.add_post(data, content_type="image/jpeg", text="x", author="a")
    with session_scope(sessions) as s:
        owner = ensure_owner(s, email="bench@example.com")
        register_work(s, FolderBlobStore(tmp / "wb"), build_engine(settings), owner_id=owner.id, data=work,
                      filename="w.jpg")
        s.add(Source(name="site", kind="mastodon", url=site.url, params={}, poll_seconds=3600))
    for _ in range(50):
        try:
            redis.Redis(port=port).ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 (closed in the finally below)
    worker = subprocess.Popen([sys.executable, "-m", "workers", "worker", "--role", "cpu", "-c", str(concurrency)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from workers import tasks
        from workers.app import configure

        configure(settings)
        while b"ready." not in (tmp / "worker.log").read_bytes():
            time.sleep(0.2)
        with session_scope(sessions) as s:
            sid = s.scalar(select(Source.id))
        t0 = time.perf_counter()
        tasks.crawl_source.delay(sid)
        while True:
            with session_scope(sessions) as s:
                total = s.scalar(select(func.count(Upload.id))) or 0
                done = s.scalar(select(func.count(Upload.id)).where(Upload.status != UploadStatus.PENDING)) or 0
            if total == n and done == n:
                break
            time.sleep(0.05)
        dt = time.perf_counter() - t0
        with session_scope(sessions) as s:
            matches = s.scalar(select(func.count(Match.id))) or 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        log.close()
        site.stop()
        rs.kill()
        rs.wait()
        db.dispose()
    return {"uploads": n, "seconds": dt, "uploads_per_s": n / dt, "matches": matches,
            "expected_matches": sum(1 for _, c in uploads if c), "worker_processes": concurrency}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["e2e", "stages", "clip"])
    ap.add_argument("--uploads", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--naive-images", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--no-clip", action="store_true", help="stages: skip the CLIP stage")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.what == "clip":
        r = clip_bench(a.device, a.images, a.batch, a.threads, a.naive_images or a.images, a.dtype)
        print(json.dumps(r)) if a.json else print_clip(r)
    elif a.what == "stages":
        r = stages_bench(a.uploads, with_clip=not a.no_clip)
        if a.json:
            print(json.dumps(r))
        else:
            print(f"{r['uploads']} uploads in one process, {r['matches']} matches; ms per upload:")
            for k, v in r["stages_ms"].items():
                print(f"  {k:<28}{v:>8.1f}")
    else:
        r = e2e_bench(a.uploads, a.concurrency)
        print(json.dumps(r)) if a.json else print(
            f"{r['uploads']} uploads end to end in {r['seconds']:.1f} s = {r['uploads_per_s']:.2f} uploads/s "
            f"({r['worker_processes']} worker processes; {r['matches']} matches, {r['expected_matches']} copies)")


if __name__ == "__main__":
    main()
