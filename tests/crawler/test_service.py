"""poll_source / fetch_upload: crash-safe upserts, evidence, dedupe, deletions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import CrawlerSettings
from crawler.errors import InvalidSourceConfig, ServerError, UnknownSourceKind
from crawler.fetch import SafeFetcher
from crawler.localsite import LocalSite
from crawler.service import build_client, canonical_url, fetch_upload, poll_source, validate_source
from storage.blobs import FolderBlobStore
from storage.models import Base, Source, Upload, UploadStatus

from .conftest import png
from .servers import PayloadServer, Reply


@pytest.fixture
def settings() -> CrawlerSettings:
    return CrawlerSettings(
        allow_internal=["127.0.0.1"],
        requests_per_second=0,
        user_agent="artwatch-test/1",
        contact_url="https://artwatch.test",
    )


@pytest.fixture
def sessions() -> sessionmaker[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def client(settings: CrawlerSettings) -> Iterator[httpx.Client]:
    with build_client(settings) as c:
        yield c


@pytest.fixture
def blobs(tmp_path: Path) -> FolderBlobStore:
    return FolderBlobStore(tmp_path / "blobs")


@pytest.mark.parametrize(
    "raw,canon",
    [
        ("HTTPS://Example.COM:443/a/b.png#frag", "https://example.com/a/b.png"),
        ("http://example.com:80/x?utm_source=tw&b=2&a=1&fbclid=zz", "http://example.com/x?a=1&b=2"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("https://i.redd.it/x.jpg?igshid=1&gclid=2&si=3", "https://i.redd.it/x.jpg"),
        ("http://[::1]:8000/a?x=1", "http://[::1]:8000/a?x=1"),
    ],
)
def test_canonical_url(raw: str, canon: str) -> None:
    assert canonical_url(raw) == canon


def test_validate_source() -> None:
    assert validate_source("mastodon", "https://pixelfed.social", {"tag": "art"}).kind == "mastodon"
    with pytest.raises(UnknownSourceKind, match="known kinds"):
        validate_source("myspace", "https://x", {})
    with pytest.raises(InvalidSourceConfig, match="absolute http"):
        validate_source("rss", "ftp://x/feed", {})
    with pytest.raises(InvalidSourceConfig, match="ws://"):
        validate_source("bluesky", "https://jetstream", {})
    with pytest.raises(InvalidSourceConfig, match="r/NAME"):
        validate_source("reddit", "https://www.reddit.com/user/x", {})
    with pytest.raises(InvalidSourceConfig, match="unknown params"):
        validate_source("mastodon", "https://m.test", {"tga": "art"})


def _row(s: Session, site: LocalSite, **kw: Any) -> Source:
    row = Source(name="local", kind="mastodon", url=site.url, params=kw)
    s.add(row)
    s.commit()
    return row


def test_poll_upserts_evidence_and_cursor_in_one_transaction(
    site: LocalSite,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    settings: CrawlerSettings,
) -> None:
    a = site.add_post(png("a"), text="my <b>art</b>", author="alice")
    b = site.add_post(png("b"), images=[(png("c"), "image/png")], author="bob")
    with sessions() as s:
        row = _row(s, site)
        ids = poll_source(s, row, client, settings)
        assert len(ids) == 3
        s.rollback()  # crash before commit: nothing of the poll survives
        assert s.scalar(select(func.count()).select_from(Upload)) == 0
        s.refresh(row)
        assert row.cursor is None and row.last_success_at is None
        ids = poll_source(s, row, client, settings)
        s.commit()
        assert len(ids) == 3 and row.cursor is not None and row.cursor["newest_id"] == b and row.uploads_seen == 3
        assert row.last_success_at is not None and row.last_error is None
        up = s.scalar(select(Upload).where(Upload.post_id == a))
        assert up is not None
        assert up.page_url == site.status_url(a) and up.image_url == site.media_url(a)
        assert up.author == "alice@127.0.0.1" and up.post_text == "my <b>art</b>"
        assert (
            up.host == "127.0.0.1" and up.source_id == row.id and up.status == UploadStatus.PENDING
        )
        # A poll repeated from an old cursor upserts: no duplicates, nothing to fetch twice.
        row.cursor = None
        poll_source(s, row, client, settings)
        s.commit()
        assert s.scalar(select(func.count()).select_from(Upload)) == 3


def test_fetch_records_evidence_and_dedupes_by_content(
    site: LocalSite,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    settings: CrawlerSettings,
    blobs: FolderBlobStore,
) -> None:
    first = site.add_post(png("same"), author="artist")
    second = site.add_post(png("same"), author="copier")  # same image posted twice
    with sessions() as s:
        row = _row(s, site)
        ids = poll_source(s, row, client, settings)
        s.commit()
        fetcher = SafeFetcher(client, settings)
        assert [fetch_upload(s, blobs, i, fetcher) for i in ids] == [True, True]
        s.commit()
        ups = list(s.scalars(select(Upload).order_by(Upload.id)))
        assert len(ups) == 2 and ups[0].canonical_url != ups[1].canonical_url
        sha = ups[0].blob_sha256
        assert sha is not None and sha == ups[1].blob_sha256  # two sightings, one blob
        assert blobs.get(sha) == png("same")
        for up in ups:
            assert up.final_url == up.image_url and up.content_type == "image/png"
            assert up.fetched_at is not None and up.headers["content-type"] == "image/png"
        assert {u.post_id for u in ups} == {first, second}
        n = len(site.requests)
        assert fetch_upload(s, blobs, ids[0], fetcher) is True  # idempotent: no second download
        assert len(site.requests) == n


def test_fetch_marks_deleted_on_404(
    site: LocalSite,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    settings: CrawlerSettings,
    blobs: FolderBlobStore,
) -> None:
    sid = site.add_post(png("gone"))
    with sessions() as s:
        row = _row(s, site)
        [uid] = poll_source(s, row, client, settings)
        site.delete_post(sid)
        assert fetch_upload(s, blobs, uid, SafeFetcher(client, settings)) is False
        s.commit()
        up = s.get(Upload, uid)
        assert up is not None and up.deleted_at is not None and "404" in (up.error or "")
        assert fetch_upload(s, blobs, uid, SafeFetcher(client, settings)) is False


def test_fetch_failures(
    sessions: sessionmaker[Session],
    client: httpx.Client,
    settings: CrawlerSettings,
    blobs: FolderBlobStore,
) -> None:
    http = PayloadServer().start()
    try:
        http.static("/page.png", b"<html>a page, not a picture</html>", "image/png")
        http.routes["/down.png"] = lambda p, q, h: Reply(500, {}, b"boom")
        http.routes["/moved.png"] = lambda p, q, h: Reply(302, {"Location": "/real.png"})
        http.static("/real.png", png("real"), "application/octet-stream")
        with sessions() as s:
            ups = [
                Upload(canonical_url=canonical_url(http.url + p), image_url=http.url + p)
                for p in ("/page.png", "/down.png", "/moved.png")
            ]
            s.add_all(ups)
            s.commit()
            fetcher = SafeFetcher(client, settings)
            assert fetch_upload(s, blobs, ups[0].id, fetcher) is False
            assert ups[0].status == UploadStatus.FAILED and "NotAnImage" in (ups[0].error or "")
            with pytest.raises(ServerError):  # transient: the task retries it
                fetch_upload(s, blobs, ups[1].id, fetcher)
            assert fetch_upload(s, blobs, ups[2].id, fetcher) is True
            assert ups[2].final_url == http.url + "/real.png" and ups[2].content_type == "image/png"
            assert fetch_upload(s, blobs, 9999, fetcher) is False  # gone: exit cleanly
    finally:
        http.stop()


def test_poll_error_recorded_and_cursor_kept(
    site: LocalSite,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    settings: CrawlerSettings,
) -> None:
    site.add_post(png(1))
    with sessions() as s:
        row = _row(s, site)
        poll_source(s, row, client, settings)
        s.commit()
        cursor = dict(row.cursor or {})
        site.fail_next("/api/", 500, count=10)
        assert poll_source(s, row, client, settings) == []
        s.commit()
        assert row.cursor == cursor and "ServerError" in (row.last_error or "")
        assert row.last_error_at is not None


def _rec(post: str, url: str, **kw: Any) -> Any:
    from crawler.sources.base import UploadRecord

    return UploadRecord(
        "mastodon", post, f"https://m.test/@a/{post}", url, author="a", text=f"text {post}", **kw
    )


def _check_sightings(sessions: sessionmaker[Session]) -> None:
    from crawler.service import record_uploads
    from storage.models import Sighting

    with sessions() as s:
        row = Source(name="m", kind="mastodon", url="https://m.test", params={})
        s.add(row)
        s.commit()
        img = "https://files.m.test/a.png?utm_source=x"
        need, created = record_uploads(
            s, row, [_rec("1", img), _rec("2", img.replace("?utm_source=x", ""))]
        )
        s.commit()
        assert created == 1 and len(need) == 1  # one image URL: one upload ...
        sightings = list(s.scalars(select(Sighting).order_by(Sighting.post_id)))
        assert [g.post_id for g in sightings] == ["1", "2"]  # ... seen in two posts
        # Repeating the batch (a poll replayed after a crash) adds nothing.
        assert record_uploads(s, row, [_rec("1", img), _rec("2", img)])[1] == 0
        s.commit()
        assert s.scalar(select(func.count()).select_from(Sighting)) == 2
        record_uploads(
            s,
            row,
            [
                _rec("2", img, edited=True).__class__(
                    "mastodon", "2", "", img, text="new words", edited=True
                )
            ],
        )
        s.commit()
        assert s.scalar(select(Sighting.post_text).where(Sighting.post_id == "2")) == "new words"
        up = s.scalar(select(Upload))
        assert up is not None and up.post_text == "text 1"  # the upload keeps its first evidence
        record_uploads(s, row, [_rec("1", "", deleted=True)])
        s.commit()
        s.refresh(up)
        assert up.deleted_at is None  # still shown in post 2
        record_uploads(s, row, [_rec("2", "", deleted=True)])
        s.commit()
        s.refresh(up)
        assert up.deleted_at is not None
        record_uploads(s, row, [_rec("3", img)])  # the same image posted again
        s.commit()
        s.refresh(up)
        assert up.deleted_at is None


def test_one_url_in_two_posts_is_one_upload_with_two_sightings(
    sessions: sessionmaker[Session],
) -> None:
    _check_sightings(sessions)


@pytest.mark.postgres
def test_upserts_on_postgres() -> None:
    import os
    import uuid

    from sqlalchemy import text

    url = os.environ.get(
        "ARTWATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    schema = f"crawler_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        engine = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
        Base.metadata.create_all(engine)
        _check_sightings(sessionmaker(engine, expire_on_commit=False))
        engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
