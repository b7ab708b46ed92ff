"""The back-scan end to end: `artwatch works add` queues it, a real worker process runs it."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select

from config.settings import Settings
from storage.blobs import build_blob_store
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Match, MatchStatus, NoticeItem, Upload, UploadStatus, WebJob
from tests.cli_process import artwatch
from tests.notices import factory as f
from tests.workers.conftest import wait_for
from workers import migrate
from workers.demo import painting, photo


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _work_id(sessions: Any) -> int:
    from storage.models import Work

    with sessions() as s:
        return int(s.scalars(select(Work.id)).one())


def test_works_add_queues_a_back_scan_that_a_worker_runs_to_a_draft(test_settings: Settings, tmp_path: Path) -> None:
    test_settings.data_dir.mkdir(parents=True)
    db = make_engine(test_settings.resolved_database_url())
    migrate.init_database(db, test_settings)
    sessions = make_sessionmaker(db)
    blobs = build_blob_store(test_settings)
    art = painting(31)
    shot = photo(4, (900, 700))
    shot.paste(art.resize((480, 360)), (220, 160))
    with session_scope(sessions) as s:
        f.owner(s, email="ada@artist.test")
        for n, data in enumerate([_jpeg(photo(1)), _jpeg(shot), _jpeg(photo(2))]):
            url = f"https://pics.example/p/{n}"
            s.add(Upload(canonical_url=url, host="pics.example", page_url=url, image_url=url + ".jpg",
                         blob_sha256=blobs.put(data), content_type="image/jpeg", status=UploadStatus.ANALYSED))
    work_file = tmp_path / "heron.png"
    art.save(work_file)
    added = artwatch("works", "add", str(work_file), "--owner", "ada@artist.test", "--title", "Heron")
    assert added.returncode == 0 and added.stderr == "", added.stderr  # queued quietly
    assert "back-scan of 3 stored uploads queued" in added.stdout
    with sessions() as s:
        job = s.scalars(select(WebJob)).one()
        assert (job.kind, job.state, job.total) == ("backscan", "queued", 3)
    # Queued again by hand (a lost message): the same job, not a second one; the rerun is harmless.
    again = artwatch("works", "backscan", str(_work_id(sessions)))
    assert again.returncode == 0 and f"back-scan job {job.id} queued again: checked 0 of 3" in again.stdout
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "workers", "worker", "--role", "cpu", "-c", "1"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        def finished() -> bool:
            with sessions() as s:
                return s.scalar(select(WebJob.state).where(WebJob.id == job.id)) == "done" and bool(
                    s.scalar(select(NoticeItem.id)))

        wait_for(finished, 180, "the back-scan and its draft")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log.close()
    with sessions() as s:
        m = s.scalars(select(Match)).one()
        assert m.upload.page_url == "https://pics.example/p/1" and m.status == MatchStatus.NEW
        item = s.scalars(select(NoticeItem)).one()
        assert item.match_id == m.id  # drafted through the normal follow-up task
        job = s.get_one(WebJob, job.id)
        assert (job.done, job.total) == (3, 3)
        assert len(s.scalars(select(WebJob)).all()) == 1
    db.dispose()


def test_works_import_queues_one_back_scan_per_owner_and_counts_failures(test_settings: Settings,
                                                                          tmp_path: Path) -> None:
    import json

    from registry.backscan import progress

    test_settings.data_dir.mkdir(parents=True)
    db = make_engine(test_settings.resolved_database_url())
    migrate.init_database(db, test_settings)
    sessions = make_sessionmaker(db)
    with session_scope(sessions) as s:
        url = "https://pics.example/p/0"
        s.add(Upload(canonical_url=url, host="pics.example", page_url=url, image_url=url,
                     blob_sha256=build_blob_store(test_settings).put(_jpeg(photo(1))), content_type="image/jpeg",
                     status=UploadStatus.ANALYSED))
    for i in range(3):
        painting(40 + i).save(tmp_path / f"w{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    lines = [{"id": "a", "file": "w0.png", "owner": "o1"}, {"id": "b", "file": "w1.png", "owner": "o1"},
             {"id": "c", "file": "w2.png", "owner": "o2"}, {"id": "d", "file": "bad.png", "owner": "o2"}]
    manifest = tmp_path / "works.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    done = artwatch("works", "import", str(manifest))
    assert done.returncode == 1, done.stderr  # one line failed: the exit status says so
    assert "imported 3 works, 1 failed" in done.stdout and "bad.png" in done.stderr
    assert "back-scan of the stored uploads queued (2 jobs, one per owner)" in done.stderr
    with sessions() as s:
        jobs = s.scalars(select(WebJob).order_by(WebJob.id)).all()
        assert [(j.kind, j.total, len(progress(j).work_ids)) for j in jobs] == [("backscan", 1, 2), ("backscan", 1, 1)]
    db.dispose()
