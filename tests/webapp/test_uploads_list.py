"""The staff uploads list: paging, status and site filters, URL search, date sort and thumbnails, in SQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from io import BytesIO

from PIL import Image
from webapp_testkit import World, logo_png

from storage.db import session_scope
from storage.models import Role, Source, Upload, UploadStatus


def _ids(html: str) -> list[int]:
    """Upload ids in page order (each row's thumbnail comes from the upload's image route)."""
    return [int(m) for m in re.findall(r'src="/uploads/(\d+)/image\?thumb=1"', html)]


def _uploads(world: World, n: int, host: str = "pics.example", status: UploadStatus = UploadStatus.ANALYSED,
             start: int = 0, source_id: int | None = None) -> list[int]:
    """n stored uploads at host, oldest first (one minute apart)."""
    ids = []
    base = datetime.now(UTC) - timedelta(days=1)
    with session_scope(world.sessions) as s:
        for i in range(start, start + n):
            url = f"https://{host}/p/{i}"
            u = Upload(canonical_url=url, host=host, page_url=url, image_url=url + ".jpg",
                       blob_sha256=world.blobs.put(logo_png(i % 5)), content_type="image/png",
                       fetched_at=base + timedelta(minutes=i), status=status, source_id=source_id,
                       error="could not decode" if status is UploadStatus.FAILED else None)
            s.add(u)
            s.flush()
            ids.append(u.id)
    return ids


def test_uploads_are_paged_and_sorted_by_date_in_sql(world: World) -> None:
    world.account("rev@example.com", Role.REVIEWER)
    ids = _uploads(world, 30)
    client = world.client("rev@example.com")
    first = client.get("/uploads?per=25").text
    assert _ids(first) == ids[::-1][:25]  # newest capture first
    assert "1\u201325 of 30" in first and "page 1 of 2" in first
    second = client.get("/uploads?per=25&page=2").text
    assert _ids(second) == ids[::-1][25:] and "26\u201330 of 30" in second
    assert _ids(client.get("/uploads?per=25&page=99").text) == _ids(second)  # past the end: the last page
    assert _ids(client.get("/uploads?sort=date&order=asc&per=25").text) == ids[:25]
    assert 'href="/uploads?page=2&amp;per=25&amp;sort=date' in first
    # The staff menu links the list.
    assert '<a href="/uploads">Uploads</a>' in first


def test_upload_filters_and_url_search(world: World) -> None:
    world.account("root@example.com", Role.ADMIN)
    with session_scope(world.sessions) as s:
        src = Source(name="the feed", kind="rss", url="https://feed.example/rss")
        s.add(src)
        s.flush()
        src_id = src.id
    pics = _uploads(world, 3)
    shop = _uploads(world, 1, host="shop.other.example", start=10, source_id=src_id)
    failed = _uploads(world, 1, host="bad.example", status=UploadStatus.FAILED, start=20)
    pending = _uploads(world, 1, host="x_y.example", status=UploadStatus.PENDING, start=30)
    with session_scope(world.sessions) as s:  # a deleted upload never shows
        gone = s.get(Upload, pics[0])
        assert gone is not None
        gone.deleted_at = datetime.now(UTC)
    client = world.client("root@example.com")
    assert sorted(_ids(client.get("/uploads").text)) == sorted(pics[1:] + shop + failed + pending)
    assert _ids(client.get("/uploads?site=other.example").text) == shop  # subdomains count
    assert _ids(client.get("/uploads?site=pics.example&order=asc").text) == pics[1:]
    page = client.get("/uploads?status=failed").text
    assert _ids(page) == failed and "could not decode" in page
    assert _ids(client.get("/uploads?status=pending").text) == pending
    assert _ids(client.get("/uploads?q=P/11").text) == []  # no such URL
    assert _ids(client.get("/uploads?q=P/10").text) == shop  # case-insensitive URL search
    assert "the feed" in client.get("/uploads?q=p/10").text  # its source is named
    assert _ids(client.get("/uploads?q=x_y").text) == pending
    assert _ids(client.get("/uploads?q=%25").text) == []  # a literal %, not "anything"
    assert "No uploads fit these filters" in client.get("/uploads?q=nothing-like-this").text


def test_upload_thumbnails_are_small_and_staff_only(world: World) -> None:
    world.account("rev@example.com", Role.REVIEWER)
    world.account("ann@example.com")
    (uid,) = _uploads(world, 1)
    rev = world.client("rev@example.com")
    thumb = rev.get(f"/uploads/{uid}/image?thumb=1")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert max(Image.open(BytesIO(thumb.content)).size) <= 96
    assert "sandbox" in thumb.headers["content-security-policy"]
    assert rev.get("/uploads/999999/image").status_code == 404
    owner = world.client("ann@example.com")
    assert owner.get("/uploads").status_code == 403
    assert owner.get(f"/uploads/{uid}/image?thumb=1").status_code == 403
    assert '<a href="/uploads">' not in owner.get("/dashboard").text
