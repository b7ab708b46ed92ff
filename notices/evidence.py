"""The evidence bundle: a zip a host (or a court) can check on its own.

Layout::

    manifest.json                 what follows, with the SHA-256 of every file; "laws"
                                  names the notice's parts (copyright law, then
                                  "trademark" when it lists logos)
    notice.txt, notice.html       the notice as it stands
    works/<work id>.<ext>         each registered work, as registered
    items/<item id>/upload.<ext>  each infringing image, as captured
    items/<item id>/overlay.png   the capture with the matched region outlined

Blob files are checked against the SHA-256 they are stored under; a mismatch
or a missing blob raises :class:`~notices.errors.EvidenceError` rather than
producing a bundle that would not stand up.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from sqlalchemy.orm import Session

from notices.drafting import part_laws
from notices.errors import EvidenceError
from notices.sanitise import safe_html
from notices.workflow import get_notice
from storage.blobs import BlobNotFound, BlobStore
from storage.models import Upload, Work, utcnow

__all__ = ["build_bundle", "overlay_png"]

_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp", "image/avif": "avif",
        "image/heic": "heic", "image/heif": "heif", "image/svg+xml": "svg", "image/bmp": "bmp", "image/tiff": "tif"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ext(data: bytes, content_type: str = "") -> str:
    if content_type in _EXT:
        return _EXT[content_type]
    try:
        with Image.open(io.BytesIO(data)) as im:
            return (im.format or "bin").lower().replace("jpeg", "jpg")
    except (UnidentifiedImageError, OSError):
        return "bin"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def overlay_png(image_bytes: bytes, region: list[Any] | None) -> bytes:
    """The image with ``region`` (a polygon in image pixels, EXIF orientation
    applied) outlined in red over a light tint; no region outlines the whole image."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as im:
            im.seek(0)
            base = ImageOps.exif_transpose(im).convert("RGBA")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise EvidenceError(f"the captured image cannot be decoded for the overlay: {exc}") from None
    w, h = base.size
    points: list[tuple[float, float]] = []
    if region and len(region) >= 3:
        try:
            points = [(float(x), float(y)) for x, y in region]
        except (TypeError, ValueError):
            points = []
    if not points:
        points = [(0.0, 0.0), (w - 1.0, 0.0), (w - 1.0, h - 1.0), (0.0, h - 1.0)]
    tint = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(tint)
    draw.polygon(points, fill=(255, 0, 0, 60))
    line = max(2, round(min(w, h) / 100))
    draw.line([*points, points[0]], fill=(255, 0, 0, 255), width=line, joint="curve")
    out = io.BytesIO()
    Image.alpha_composite(base, tint).convert("RGB").save(out, "PNG")
    return out.getvalue()


def _blob(blobs: BlobStore, sha256: str | None, what: str) -> bytes:
    if not sha256:
        raise EvidenceError(f"{what} was never captured (no stored image)")
    try:
        data = blobs.get(sha256)
    except BlobNotFound:
        raise EvidenceError(f"{what}: blob {sha256[:12]}… is missing from the blob store") from None
    if _sha(data) != sha256:
        raise EvidenceError(f"{what}: blob {sha256[:12]}… does not match its SHA-256 (corrupted)")
    return data


def build_bundle(session: Session, blobs: BlobStore, notice_id: int, now: datetime | None = None) -> bytes:
    """The zip bytes of the notice's evidence bundle (see the module docstring)."""
    notice = get_notice(session, notice_id)
    generated = now or utcnow()
    files: dict[str, bytes] = {}
    items: list[dict[str, Any]] = []
    works: dict[int, str] = {}
    kinds: list[object] = []
    for item in notice.items:
        match = item.match
        upload: Upload | None = match.upload if match is not None else None
        work: Work | None = session.get(Work, item.work_id)
        if match is None or upload is None or work is None:
            raise EvidenceError(f"notice {notice.id}: the match behind {item.url} no longer exists")
        if item.online != "removed":
            kinds.append(work.kind)
        if work.id not in works:
            data = _blob(blobs, work.blob_sha256, f"registered work {work.id}")
            works[work.id] = f"works/{work.id}.{_ext(data)}"
            files[works[work.id]] = data
        captured = _blob(blobs, upload.blob_sha256, f"capture of {item.url}")
        base = f"items/{item.id}"
        upload_path = f"{base}/upload.{_ext(captured, upload.content_type)}"
        files[upload_path] = captured
        files[f"{base}/overlay.png"] = overlay_png(captured, match.region)
        items.append({
            "item_id": item.id,
            "url": item.url,
            "image_url": upload.image_url,
            "page_url": upload.page_url,
            "final_url": upload.final_url,
            "captured_at": _iso(upload.fetched_at),
            "content_type": upload.content_type,
            "response_headers": upload.headers or {},
            "author": upload.author,
            "work": {"id": work.id, "title": work.title, "kind": getattr(work.kind, "value", str(work.kind)),
                     "registration_number": work.registration_number, "sha256": work.blob_sha256,
                     "file": works[work.id]},
            "match": {"id": match.id, "score": match.score, "signals": match.signals or {},
                      "region": match.region, "matched_at": _iso(match.created_at)},
            "files": {"upload": upload_path, "overlay": f"{base}/overlay.png"},
            "upload_sha256": upload.blob_sha256,
            "online": item.online or None,
            "checked_at": _iso(item.checked_at),
        })
    files["notice.txt"] = notice.body_text.encode("utf-8")
    files["notice.html"] = safe_html(notice.body_html).encode("utf-8")  # as sent and as reviewed
    manifest = {
        "format": "artwatch-evidence/1",
        "generated_at": _iso(generated),
        "notice": {"id": notice.id, "host": notice.host, "law": notice.law,
                   "laws": part_laws(notice.law, kinds), "state": notice.state.value,
                   "recipient": notice.recipient, "subject": notice.subject, "created_at": _iso(notice.created_at),
                   "sent_at": _iso(notice.sent_at)},
        "items": items,
        "files": {path: {"sha256": _sha(data), "bytes": len(data)} for path, data in sorted(files.items())},
    }
    out = io.BytesIO()
    stamp = generated.astimezone(UTC).timetuple()[:6]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in [("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode()),
                           *sorted(files.items())]:
            info = zipfile.ZipInfo(path, date_time=stamp)
            info.compress_type = zipfile.ZIP_STORED if path.endswith((".png", ".jpg")) else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return out.getvalue()
