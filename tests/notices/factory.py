"""Small builders for accounts, works, uploads and matches in tests."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from storage.blobs import FolderBlobStore
from storage.models import Account, Match, MatchStatus, Upload, UploadStatus, Work, WorkKind


def owner(s: Session, email: str = "ada@artist.test", complete: bool = True, **kw: Any) -> Account:
    acc = Account(email=email, display_name="Ada",
                  legal_name="Ada Artist" if complete else "",
                  postal_address="12 Canal Street\nAmsterdam 1012" if complete else "",
                  phone="+31 20 555 0101" if complete else "", **kw)
    s.add(acc)
    s.flush()
    return acc


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def work(s: Session, acc: Account, title: str = "Blue Heron", kind: WorkKind = WorkKind.ARTWORK,
         blobs: FolderBlobStore | None = None) -> Work:
    data = png((10, 40, 200))
    sha = blobs.put(data) if blobs is not None else "a" * 64
    w = Work(owner_id=acc.id, title=title, kind=kind, blob_sha256=sha, filename=f"{title}.png",
             registration_number="VA 1-111-111")
    s.add(w)
    s.flush()
    return w


def upload(s: Session, image_url: str, page_url: str = "", blobs: FolderBlobStore | None = None,
           **kw: Any) -> Upload:
    from urllib.parse import urlsplit

    sha = blobs.put(png((200, 40, 10), (160, 120))) if blobs is not None else None
    up = Upload(canonical_url=image_url, image_url=image_url, page_url=page_url or image_url,
                host=(urlsplit(page_url or image_url).hostname or ""), blob_sha256=sha,
                content_type="image/png", status=UploadStatus.ANALYSED,
                fetched_at=datetime(2026, 11, 20, 9, 30, tzinfo=UTC), **kw)
    s.add(up)
    s.flush()
    return up


def match(s: Session, up: Upload, w: Work, status: MatchStatus = MatchStatus.NEW) -> Match:
    m = Match(upload_id=up.id, work_id=w.id, owner_id=w.owner_id, score=0.93,
              signals={"pdq": 0.91, "local": 0.88, "clip": 0.95},
              region=[[20, 10], [120, 12], [118, 90], [22, 88]], status=status)
    s.add(m)
    s.flush()
    return m
