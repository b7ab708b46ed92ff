"""Crawl throughput against a LocalSite on 127.0.0.1: uploads/second and CPU per upload.

Each run publishes N image posts on a LocalSite (in its own process, so its
CPU is not counted), then does the full crawl: poll_source (pages of 40
statuses, rows + cursor in one transaction on SQLite) and fetch_upload for
every new image (download, sniff, store in a folder blob store). Configs:

- raw:     plain httpx.Client, no address checks, no politeness (baseline)
- safe:    build_client with politeness off (robots off, no rate limit)
- polite:  build_client with robots.txt obeyed, --rps requests/second per host

    python bench/crawl_throughput.py --posts 300 --rps 50
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from config.settings import CrawlerSettings
from crawler.fetch import SafeFetcher
from crawler.service import build_client, fetch_upload, poll_source
from storage.blobs import FolderBlobStore
from storage.models import Base, Source


def _png(i: int, size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + i.to_bytes(8, "big") + b"\x00" * size


def _serve(posts: int, size: int, conn: Any) -> None:
    from crawler.localsite import LocalSite

    with LocalSite() as site:
        for i in range(posts):
            site.add_post(_png(i, size), text=f"post {i}", author=f"user{i % 7}")
        conn.send(site.url)
        conn.recv()  # until told to stop


def crawl(
    url: str, client: httpx.Client, settings: CrawlerSettings, workdir: Path
) -> tuple[int, float, float, float]:
    engine = create_engine(f"sqlite:///{workdir / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    blobs = FolderBlobStore(workdir / "blobs")
    fetcher = SafeFetcher(client, settings)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fetched = 0
    with sessions() as s:
        row = Source(
            name="bench", kind="mastodon", url=url, params={"limit": 40, "backfill_pages": 1000}
        )
        s.add(row)
        s.commit()
        ids = poll_source(s, row, client, settings)
        s.commit()
        poll_wall = time.perf_counter() - wall0
        assert row.last_error is None, row.last_error
        for uid in ids:
            fetched += fetch_upload(s, blobs, uid, fetcher)
            s.commit()
    return fetched, time.perf_counter() - wall0, time.process_time() - cpu0, poll_wall


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--posts", type=int, default=300)
    ap.add_argument("--bytes", type=int, default=50_000, help="image size")
    ap.add_argument("--rps", type=float, default=50.0, help="per-host rate for the polite config")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--tmp", default=None, help="where the SQLite file and blobs go (e.g. /dev/shm)"
    )
    args = ap.parse_args()

    parent, child = mp.Pipe()
    server = mp.Process(target=_serve, args=(args.posts, args.bytes, child), daemon=True)
    server.start()
    url = parent.recv()
    common: dict[str, Any] = dict(
        allow_internal=["127.0.0.1"],
        user_agent="artwatch-bench/1",
        contact_url="https://artwatch.test",
        max_concurrency_per_host=2,
    )
    configs = {
        "raw": None,
        "safe": CrawlerSettings(obey_robots=False, requests_per_second=0, **common),
        "polite": CrawlerSettings(obey_robots=True, requests_per_second=args.rps, **common),
    }
    results: dict[str, list[tuple[int, float, float, float]]] = {k: [] for k in configs}
    for _ in range(args.repeat):
        for name, settings in configs.items():
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                if settings is None:
                    st = configs["safe"]
                    assert st is not None
                    with httpx.Client(timeout=20) as client:
                        results[name].append(crawl(url, client, st, Path(tmp)))
                else:
                    with build_client(settings) as client:
                        results[name].append(crawl(url, client, settings, Path(tmp)))
    parent.send("stop")
    server.join(5)
    base = None
    print(
        f"posts={args.posts} image_bytes={args.bytes} polite_rps={args.rps} repeat={args.repeat} "
        f"tmp={args.tmp or 'default'} (best run)"
    )
    print(
        f"{'config':8} {'uploads':>7} {'poll s':>7} {'wall s':>7} {'uploads/s':>10} {'CPU ms/upload':>14} "
        f"{'speed vs raw':>13}"
    )
    for name, runs in results.items():
        n, wall, cpu, poll = min(runs, key=lambda r: r[1])
        rate = n / wall
        base = base or rate
        print(
            f"{name:8} {n:7d} {poll:7.2f} {wall:7.2f} {rate:10.1f} {1000 * cpu / n:14.2f} {rate / base:13.2f}"
        )


if __name__ == "__main__":
    main()
