"""Load test of the web app on 127.0.0.1: the match listing and the on-demand check.

Builds a throwaway data dir (SQLite, folder blobs, the embedded matching
engine with CLIP off), registers works, records matches, then serves the app
with uvicorn in a separate process and drives it from a thread pool of httpx
clients at several concurrency levels. Each level sends a fixed number of
requests; latency is measured per request on the client.

    python bench/web_load.py --levels 1,8,32 --list-requests 400 --check-requests 96

Prints a Markdown table (p50/p95 latency, requests per second, and throughput
relative to one client in the same run).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _settings(data_dir: Path, port: int):  # type: ignore[no-untyped-def]
    from config.settings import load_settings

    return load_settings(
        data_dir=data_dir,
        matching={"clip_pretrained": "", "use_embedder": False},
        web={"secret_key": "bench-secret", "port": port},
    )


def prepare(data_dir: Path, port: int, works: int, matches: int) -> tuple[str, bytes]:
    """Create the database, works and matches; return an API token and a probe image."""
    from PIL import Image

    from matching import build_engine
    from registry.service import register_work
    from storage.blobs import FolderBlobStore
    from storage.db import make_engine, make_sessionmaker, session_scope
    from storage.models import Account, Base, Match, Upload, UploadStatus
    from webapp.security import issue_api_token
    from workers.demo import logo, painting, photo

    settings = _settings(data_dir, port)
    engine = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    blobs = FolderBlobStore(settings.blob_dir())
    matcher = build_engine(settings)

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    def jpeg(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=88)
        return buf.getvalue()

    with session_scope(sessions) as s:
        owner = Account(email="bench@example.com", display_name="bench")
        s.add(owner)
        s.flush()
        token = issue_api_token(owner)
        work_ids = []
        first_logo = png(logo(1, "ACME"))
        for i in range(works):
            data = (
                first_logo if i == 0 else (png(logo(i + 1, f"L{i}")) if i % 2 else png(painting(i)))
            )
            work_ids.append(
                register_work(
                    s,
                    blobs,
                    matcher,
                    owner_id=owner.id,
                    data=data,
                    filename=f"w{i}.png",
                    title=f"Work {i}",
                    kind="logo" if i % 2 == 0 else "artwork",
                ).id
            )
        shot_img = photo(5, (640, 480)).convert("RGB")
        mark = Image.open(io.BytesIO(first_logo)).convert("RGBA").resize((256, 256))
        shot_img.paste(mark, (320, 160), mark)
        shot = jpeg(shot_img)
        sha = blobs.put(shot)
        now = datetime.now(UTC)
        for j in range(matches):
            up = Upload(
                canonical_url=f"https://pics.example/p/{j}",
                host="pics.example",
                page_url=f"https://pics.example/p/{j}",
                image_url=f"https://pics.example/i/{j}.jpg",
                blob_sha256=sha,
                content_type="image/jpeg",
                fetched_at=now - timedelta(minutes=j),
                status=UploadStatus.ANALYSED,
            )
            s.add(up)
            s.flush()
            s.add(
                Match(
                    upload_id=up.id,
                    work_id=work_ids[j % len(work_ids)],
                    owner_id=owner.id,
                    score=0.5 + (j % 50) / 100,
                    signals={"local": 0.9, "pdq": 0.7},
                    region=[[320, 160], [576, 160], [576, 416], [320, 416]],
                )
            )
    engine.dispose()
    return token, shot


SERVE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import uvicorn
    from bench.web_load import _settings
    from webapp import create_app
    from pathlib import Path
    settings = _settings(Path({data_dir!r}), {port})
    app = create_app(settings)
    uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(
    base: str, token: str, concurrency: int, n: int, kind: str, probe: bytes
) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    clients = [
        httpx.Client(base_url=base, headers=headers, timeout=120) for _ in range(concurrency)
    ]

    def one(i: int) -> float:
        client = clients[i % concurrency]
        t0 = time.perf_counter()
        if kind == "list":
            r = client.get("/api/v1/matches", params={"limit": 50})
        else:
            r = client.post("/api/v1/check", files={"file": ("probe.jpg", probe, "image/jpeg")})
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"{kind}: HTTP {r.status_code}: {r.text[:200]}")
        if kind == "check" and not r.json()["copies"]:
            raise RuntimeError("the probe should copy work 0")
        return elapsed

    # Warm up (engine load, caches) outside the measurement.
    for i in range(min(concurrency, 4)):
        one(i)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    q = statistics.quantiles(latencies, n=100)
    return {"p50": q[49] * 1000, "p95": q[94] * 1000, "rps": n / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--list-requests", type=int, default=400)
    ap.add_argument("--check-requests", type=int, default=96)
    ap.add_argument("--works", type=int, default=20)
    ap.add_argument("--matches", type=int, default=500)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="artwatch-webload-") as tmp:
        data_dir = Path(tmp)
        t0 = time.perf_counter()
        token, probe = prepare(data_dir, port, args.works, args.matches)
        print(
            f"prepared {args.works} works and {args.matches} matches "
            f"in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARTWATCH_")}
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE.format(root=str(ROOT), data_dir=str(data_dir), port=port)],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(base + "/login", timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.2)
            rows = []
            for kind, n in (("list", args.list_requests), ("check", args.check_requests)):
                base_rps = None
                for c in levels:
                    res = drive(base, token, c, n, kind, probe)
                    base_rps = base_rps or res["rps"]
                    rows.append((kind, c, n, res, res["rps"] / base_rps))
                    print(
                        f"{kind} c={c}: p50 {res['p50']:.1f} ms, p95 {res['p95']:.1f} ms, "
                        f"{res['rps']:.1f} req/s",
                        file=sys.stderr,
                    )
        finally:
            server.terminate()
            server.wait(timeout=20)
    print("| endpoint | clients | requests | p50 ms | p95 ms | req/s | req/s vs 1 client |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    names = {"list": "GET /api/v1/matches?limit=50", "check": "POST /api/v1/check (640x480 JPEG)"}
    for kind, c, n, res, ratio in rows:
        print(
            f"| {names[kind]} | {c} | {n} | {res['p50']:.1f} | {res['p95']:.1f} | "
            f"{res['rps']:.1f} | "
            f"{ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
