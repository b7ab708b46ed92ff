"""Back-scan cost: one newly registered work checked against N stored uploads.

    PYTHONPATH=. python bench/backscan.py --uploads 10000 --works 200

Builds a fresh embedded deployment in a temporary folder (SQLite, folder
blobs, the local-feature engine, CLIP off), registers ``--works`` works
(synthetic logos and paintings from ``workers.demo``), stores ``--uploads``
analysed uploads (synthetic photos, ``--distinct`` different images cycled,
every ``--copy-every``-th one with the new work pasted in), then registers one
more work and runs its back-scan to the end through
:func:`registry.backscan.run_batch` (the task body, batches of
:data:`registry.backscan.BATCH`, one transaction each), timing wall clock and
CPU (``time.process_time``). In the same process and on the same uploads, a
normal analysis (``Engine.analyse`` over the whole registry, what
``analyse_upload`` does) is timed on ``--compare`` of them. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _jpeg(img: Any) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--uploads", type=int, default=10_000)
    ap.add_argument("--works", type=int, default=200, help="works registered before the new one")
    ap.add_argument("--distinct", type=int, default=500, help="different upload images, cycled")
    ap.add_argument("--copy-every", type=int, default=250, help="every n-th upload copies the new work")
    ap.add_argument("--compare", type=int, default=200, help="uploads also analysed normally")
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), help="upload image size")
    args = ap.parse_args(argv)

    from sqlalchemy import func, select

    from config.settings import load_settings
    from matching import build_engine
    from registry.backscan import BATCH, progress, run_batch, start_backscan
    from registry.service import ensure_owner, register_work
    from storage.blobs import build_blob_store
    from storage.db import make_engine, make_sessionmaker, session_scope
    from storage.models import Match, Upload, UploadStatus, WebJob
    from workers import migrate
    from workers.demo import logo, painting, photo

    with tempfile.TemporaryDirectory(prefix="bench-backscan-") as tmp:
        settings = load_settings(data_dir=Path(tmp), matching={"use_embedder": False, "clip_pretrained": ""})
        db = make_engine(settings.resolved_database_url())
        migrate.init_database(db, settings)
        sessions = make_sessionmaker(db)
        blobs = build_blob_store(settings)
        engine = build_engine(settings)
        t0 = time.perf_counter()
        with session_scope(sessions) as s:
            other = ensure_owner(s, email="others@bench.test")
            for i in range(args.works):
                img = logo(1000 + i, f"W{i}") if i % 2 else painting(1000 + i)
                register_work(s, blobs, engine, owner_id=other.id, data=_png(img), filename=f"w{i}.png",
                              kind="logo" if i % 2 else "artwork")
        engine.retrain()
        t_works = time.perf_counter() - t0

        new_art = painting(7)
        t0 = time.perf_counter()
        images: list[bytes] = []
        for k in range(args.distinct):
            bg = photo(50_000 + k, tuple(args.size))
            images.append(_jpeg(bg))
        copies: list[bytes] = []
        for k in range(max(1, args.uploads // args.copy_every)):
            bg = photo(90_000 + k, tuple(args.size))
            w, h = args.size
            bg.paste(new_art.resize((w * 2 // 3, h * 2 // 3)), (w // 6 + k % 20, h // 6))
            copies.append(_jpeg(bg))
        with session_scope(sessions) as s:
            shas = [blobs.put(b) for b in images]
            copy_shas = [blobs.put(b) for b in copies]
            for n in range(args.uploads):
                is_copy = n % args.copy_every == args.copy_every // 2
                sha = copy_shas[(n // args.copy_every) % len(copy_shas)] if is_copy else shas[n % len(shas)]
                url = f"https://pics.example/u/{n}"
                s.add(Upload(canonical_url=url, host="pics.example", page_url=url, image_url=url + ".jpg",
                             blob_sha256=sha, content_type="image/jpeg", status=UploadStatus.ANALYSED))
        t_uploads = time.perf_counter() - t0
        expected = sum(1 for n in range(args.uploads) if n % args.copy_every == args.copy_every // 2)

        with session_scope(sessions) as s:
            ada = ensure_owner(s, email="ada@bench.test")
            work = register_work(s, blobs, engine, owner_id=ada.id, data=_png(new_art), filename="new.png",
                                 kind="artwork")
            job = start_backscan(s, None, ada.id, [work.id])
            assert job is not None
            job_id = job.id
        batches = 0
        w0, c0 = time.perf_counter(), time.process_time()
        while True:
            with session_scope(sessions) as s:
                r = run_batch(s, blobs, engine, job_id)
            batches += 1
            if r is None or not r.more:
                break
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        with session_scope(sessions) as s:
            p = progress(s.get_one(WebJob, job_id))
            found = s.scalar(select(func.count(Match.id)).where(Match.work_id == work.id)) or 0

        # The normal analysis of the same stored uploads (whole registry, unrestricted).
        with sessions() as s:
            sample = s.scalars(select(Upload.blob_sha256).order_by(Upload.id.desc()).limit(args.compare)).all()
        cw0, cc0 = time.perf_counter(), time.process_time()
        for sha in sample:
            assert sha is not None
            engine.analyse(blobs.get(sha), name="x")
        n_wall, n_cpu = time.perf_counter() - cw0, time.process_time() - cc0
        db.dispose()

    out = {
        "uploads": args.uploads, "registered_works": args.works + 1, "distinct_images": args.distinct,
        "upload_size": list(args.size), "batch": BATCH, "batches": batches,
        "checked": p.done, "total": p.total, "found": found, "expected_copies": expected,
        "backscan_wall_s": round(wall, 1), "backscan_uploads_per_s": round(p.done / wall, 1),
        "backscan_cpu_ms_per_upload": round(1000 * cpu / max(1, p.done), 1),
        "normal_analyse_cpu_ms_per_upload": round(1000 * n_cpu / max(1, len(sample)), 1),
        "normal_analyse_uploads_per_s": round(len(sample) / n_wall, 1),
        "setup_works_s": round(t_works, 1), "setup_uploads_s": round(t_uploads, 1),
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
