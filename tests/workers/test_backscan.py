"""Back-scan: a work registered after uploads were analysed finds its copies among them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from registry.backscan import jobs_for_work, progress, run_batch, start_backscan
from registry.service import analyse_upload, ensure_owner, register_work
from storage.blobs import BlobStore
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Account, Match, MatchStatus, Upload, UploadStatus, WebJob, Work
from workers import migrate
from workers.demo import painting, photo


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _copy_in_photo(work: Image.Image, seed: int) -> bytes:
    """The work pasted, scaled down, into a larger unrelated photo (a partial copy)."""
    bg = photo(seed, (900, 700))
    bg.paste(work.resize((480, 360)), (200 + seed % 50, 150))
    return _jpeg(bg)


@dataclass
class World:
    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    matcher: Any


@pytest.fixture
def world(test_settings: Settings) -> Iterator[World]:
    from matching import build_engine
    from storage.blobs import build_blob_store

    test_settings.data_dir.mkdir(parents=True)
    db = make_engine(test_settings.resolved_database_url())
    migrate.init_database(db, test_settings)
    yield World(test_settings, make_sessionmaker(db), build_blob_store(test_settings), build_engine(test_settings))
    db.dispose()


def _stored_upload(w: World, data: bytes, url: str) -> int:
    """An upload crawled and analysed before the work existed (the normal path)."""
    with session_scope(w.sessions) as s:
        up = Upload(canonical_url=url, image_url=url, page_url=url, host="img.example.net",
                    blob_sha256=w.blobs.put(data), content_type="image/jpeg")
        s.add(up)
        s.flush()
        result = analyse_upload(s, w.blobs, w.matcher, up.id)
        assert result is not None
        return up.id


def _register(w: World, s: Session, owner: Account, img: Image.Image, title: str,
              licensed: tuple[str, ...] = ()) -> int:
    work = register_work(s, w.blobs, w.matcher, owner_id=owner.id, data=_png(img), filename=f"{title}.png",
                         title=title, licensed_sites=licensed)
    return work.id


def _start(s: Session, owner: Account, work_id: int) -> int:
    job = start_backscan(s, None, owner.id, [work_id])
    assert job is not None
    return job.id


def _drain(w: World, job_id: int, batch: int) -> list[int]:
    created: list[int] = []
    while True:
        with session_scope(w.sessions) as s:
            r = run_batch(s, w.blobs, w.matcher, job_id, batch=batch)
        if r is None:
            return created
        created += r.new_match_ids
        if not r.more:
            return created


def test_a_work_registered_after_the_crawl_finds_its_copy_newest_first_in_batches(world: World) -> None:
    art = painting(7)
    other = painting(8)
    # Uploads of other owners' images are scanned too (uploads belong to nobody);
    # three unrelated photos, one copy, one more unrelated: six uploads in all.
    ids = [_stored_upload(world, _jpeg(photo(k)), f"https://img.example.net/p{k}.jpg") for k in range(3)]
    copy_id = _stored_upload(world, _copy_in_photo(art, 3), "https://img.example.net/copy.jpg")
    ids += [copy_id] + [_stored_upload(world, _jpeg(photo(k)), f"https://img.example.net/q{k}.jpg")
                        for k in range(10, 12)]
    with session_scope(world.sessions) as s:
        assert s.scalar(select(func.count(Match.id))) == 0  # nothing registered at crawl time
        bob = ensure_owner(s, email="bob@example.test")
        _register(world, s, bob, other, "Other")  # another owner's work: never scanned by Ada's job
        ada = ensure_owner(s, email="ada@example.test")
        wid = _register(world, s, ada, art, "Heron")
        job = start_backscan(s, None, ada.id, [wid])
        assert job is not None
        job_id, ada_id = job.id, ada.id
        assert (job.kind, job.state, job.total, job.done) == ("backscan", "queued", 6, 0)
    # Batches of 4: the first covers the four newest uploads (ids 6..3), the copy among them.
    with session_scope(world.sessions) as s:
        first = run_batch(s, world.blobs, world.matcher, job_id, batch=4)
    assert first is not None and first.more and len(first.new_match_ids) == 1
    with session_scope(world.sessions) as s:
        row = s.get(WebJob, job_id)
        assert row is not None
        p = progress(row)
        assert (p.state, p.total, p.done, p.found, p.before_id) == ("running", 6, 4, 1, sorted(ids)[-4])
    rest = _drain(world, job_id, batch=4)
    assert rest == []
    with session_scope(world.sessions) as s:
        matches = s.scalars(select(Match)).all()
        assert [(m.upload_id, m.work_id, m.owner_id, m.status) for m in matches] == [
            (copy_id, wid, ada_id, MatchStatus.NEW)]
        row = s.get(WebJob, job_id)
        assert row is not None and (row.state, row.done, progress(row).found) == ("done", 6, 1)
        work = s.get(Work, wid)
        assert work is not None and [p.job_id for p in jobs_for_work(s, work)] == [job_id]


def test_rerunning_a_batch_after_a_crash_creates_no_second_match(world: World) -> None:
    art = painting(11)
    copy_id = _stored_upload(world, _copy_in_photo(art, 5), "https://img.example.net/c.jpg")
    with session_scope(world.sessions) as s:
        ada = ensure_owner(s, email="ada@example.test")
        wid = _register(world, s, ada, art, "Gull")
        job_id = _start(s, ada, wid)
    # A worker killed before its commit: the batch's work is rolled back with the cursor.
    with world.sessions() as s:
        r = run_batch(s, world.blobs, world.matcher, job_id, batch=10)
        assert r is not None and len(r.new_match_ids) == 1
        s.rollback()
    # The redelivered message checks the same batch again; then a duplicate delivery after the commit.
    assert len(_drain(world, job_id, batch=10)) == 1
    with session_scope(world.sessions) as s:
        assert run_batch(s, world.blobs, world.matcher, job_id, batch=10) is None  # finished: nothing redone
        # Even a job started again over the same uploads finds the match already there.
        again = _start(s, ada, wid)
    assert _drain(world, again, batch=10) == []
    with session_scope(world.sessions) as s:
        assert [(m.upload_id, m.work_id) for m in s.scalars(select(Match))] == [(copy_id, wid)]
        job = s.get(WebJob, again)
        assert job is not None and progress(job).found == 1


def test_a_licensed_site_is_suppressed_and_queues_no_follow_up(world: World) -> None:
    art = painting(13)
    _stored_upload(world, _copy_in_photo(art, 9), "https://img.example.net/l.jpg")
    with session_scope(world.sessions) as s:
        ada = ensure_owner(s, email="ada@example.test")
        wid = _register(world, s, ada, art, "Licensed", licensed=("img.example.net",))
        job_id = _start(s, ada, wid)
    assert _drain(world, job_id, batch=10) == []  # no draft, no alert for a licensed copy
    with session_scope(world.sessions) as s:
        m = s.scalar(select(Match))
        assert m is not None and m.status == MatchStatus.SUPPRESSED
        job = s.get(WebJob, job_id)
        assert job is not None and progress(job).found == 0


def test_only_analysed_kept_uploads_are_counted_and_nothing_to_scan_means_no_job(world: World) -> None:
    with session_scope(world.sessions) as s:
        ada = ensure_owner(s, email="ada@example.test")
        wid = _register(world, s, ada, painting(3), "Alone")
        assert start_backscan(s, None, ada.id, [wid]) is None  # nothing stored: no job
        s.add(Upload(canonical_url="https://x.example/bad", status=UploadStatus.FAILED, blob_sha256="0" * 64))
        s.add(Upload(canonical_url="https://x.example/pending", status=UploadStatus.PENDING))
        s.add(Upload(canonical_url="https://x.example/gone", status=UploadStatus.ANALYSED, blob_sha256="1" * 64,
                     deleted_at=datetime.now(UTC)))
        s.flush()
        assert start_backscan(s, None, ada.id, [wid]) is None
        s.add(Upload(canonical_url="https://x.example/ok", status=UploadStatus.ANALYSED, blob_sha256="2" * 64))
        s.flush()
        job = start_backscan(s, None, ada.id, [wid])
        assert job is not None and (job.state, job.total) == ("queued", 1)
        assert s.scalar(select(func.count(WebJob.id))) == 1


def test_the_task_runs_a_batch_and_queues_the_next(world: World) -> None:
    """The Celery task, run in-process as the other task tests do; the next batch goes to the broker."""
    from workers import tasks
    from workers.app import configure
    from workers.runtime import set_runtime_settings

    art = painting(21)
    copy_id = _stored_upload(world, _copy_in_photo(art, 2), "https://img.example.net/t.jpg")
    with session_scope(world.sessions) as s:
        ada = ensure_owner(s, email="ada@example.test")
        wid = _register(world, s, ada, art, "Tern")
        job_id = _start(s, ada, wid)
    set_runtime_settings(world.settings)
    configure(world.settings)
    assert tasks.backscan.apply(args=[job_id]).get() == 1
    with session_scope(world.sessions) as s:
        assert [(m.upload_id, m.work_id) for m in s.scalars(select(Match))] == [(copy_id, wid)]
        job = s.get(WebJob, job_id)
        assert job is not None and job.state == "done"


def test_one_job_for_an_import_checks_each_upload_once_against_all_its_works(world: World) -> None:
    first, second = painting(51), painting(52)
    a = _stored_upload(world, _copy_in_photo(first, 1), "https://img.example.net/a.jpg")
    _stored_upload(world, _jpeg(photo(77)), "https://img.example.net/n.jpg")
    b = _stored_upload(world, _copy_in_photo(second, 2), "https://img.example.net/b.jpg")
    with session_scope(world.sessions) as s:
        ada = ensure_owner(s, email="ada@example.test")
        w1, w2 = _register(world, s, ada, first, "First"), _register(world, s, ada, second, "Second")
        job = start_backscan(s, None, ada.id, [w2, w1])
        assert job is not None and job.total == 3
        job_id = job.id
    assert len(_drain(world, job_id, batch=2)) == 2
    with session_scope(world.sessions) as s:
        assert sorted((m.upload_id, m.work_id) for m in s.scalars(select(Match))) == sorted([(a, w1), (b, w2)])
        row = s.get_one(WebJob, job_id)
        assert (progress(row).found, progress(row).work_ids) == (2, (w1, w2))
        # Each work's page counts its own matches.
        for wid in (w1, w2):
            [p] = jobs_for_work(s, s.get_one(Work, wid))
            assert (p.job_id, p.found, p.done, p.total) == (job_id, 1, 3, 3)


def test_the_engine_restricted_to_works_sees_only_those(world: World) -> None:
    first, second = painting(61), painting(62)
    with session_scope(world.sessions) as s:
        ada = ensure_owner(s, email="ada@example.test")
        w1, w2 = _register(world, s, ada, first, "One"), _register(world, s, ada, second, "Two")
    shot = _copy_in_photo(first, 4)
    assert any(c.match and c.work_id == w1 for c in world.matcher.analyse(shot, name="x"))
    assert [c.work_id for c in world.matcher.analyse(shot, name="x", work_ids=[w1]) if c.match] == [w1]
    assert all(c.work_id == w2 for c in world.matcher.analyse(shot, name="x", work_ids=[w2]))
    assert world.matcher.analyse(shot, name="x", work_ids=[]) == []
