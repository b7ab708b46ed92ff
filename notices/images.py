"""Small image helpers for display: type sniffing, pixel size, thumbnails.

Matching decodes images with its own hardened decoder; these helpers only
serve pages and emails, and never raise on a bad image (they return None).
SVG is rendered by :func:`matching.svg.render_svg`, the project's one
sanitising, bounded SVG renderer, so a stored SVG cannot make a thumbnail read
a file from this machine or hold a worker past the render budget.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from typing import Any

from PIL import Image

__all__ = ["ACCEPTED_TYPES", "image_size", "media_type", "rgba_pixels", "sniff", "thumbnail_png"]

ACCEPTED_TYPES = ("png", "jpeg", "webp", "svg")
_MEDIA = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "svg": "image/svg+xml",
    "gif": "image/gif",
    "avif": "image/avif",
    "heic": "image/heic",
}
_SVG_HEAD = re.compile(
    rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*(<!DOCTYPE[^>]*>\s*)?<svg[\s>]", re.DOTALL | re.IGNORECASE
)


def sniff(data: bytes) -> str | None:
    """The image type from its first bytes: png, jpeg, webp, svg, gif, avif, heic or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1"):
            return "heic"
    head = data[:4096].lstrip(b"\xef\xbb\xbf")
    if _SVG_HEAD.match(head):
        return "svg"
    return None


def media_type(data: bytes) -> str:
    kind = sniff(data)
    return _MEDIA.get(kind or "", "application/octet-stream")


def _svg_png(data: bytes, side: int | None = None) -> bytes | None:
    from matching.errors import ImageError
    from matching.svg import render_svg

    try:
        return render_svg(data, name="stored SVG", side=side)
    except ImageError:  # a display helper never fails the page
        return None


@lru_cache(maxsize=2048)
def _size_cached(data: bytes) -> tuple[int, int] | None:
    if sniff(data) == "svg":
        png = _svg_png(data)
        if png is None:
            return None
        data = png
    # No warnings.catch_warnings() here: it is not thread-safe, and these run in
    # request threads next to FastAPI's own use of it.
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            return (int(w), int(h))
    except Exception:  # noqa: BLE001
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height in pixels, as the region coordinates use them; None if unreadable."""
    return _size_cached(data)


def _rgba_frame(data: bytes, box: int) -> Image.Image | None:
    """The image (an SVG rendered first) as RGBA, no larger than box x box; None if unreadable."""
    if sniff(data) == "svg":
        png = _svg_png(data, side=box)
        if png is None:
            return None
        data = png
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (box, box))
            frame = im.convert("RGBA")
            frame.thumbnail((box, box))
            return frame
    except Exception:  # noqa: BLE001 - a display helper never fails the page
        return None


def thumbnail_png(data: bytes, box: int = 240) -> bytes | None:
    """A PNG no larger than box x box (white behind transparency), or None if unreadable."""
    frame = _rgba_frame(data, box)
    if frame is None:
        return None
    flat = Image.new("RGB", frame.size, "white")
    flat.paste(frame, mask=frame.getchannel("A"))
    out = io.BytesIO()
    flat.save(out, "PNG", optimize=True)
    return out.getvalue()


def rgba_pixels(data: bytes, box: int = 512) -> Any | None:
    """The image as an RGBA numpy array no larger than box x box, or None if unreadable.

    For comparing colours on the evidence page; the caller scales coordinates
    by the returned width over :func:`image_size`'s.
    """
    import numpy as np

    frame = _rgba_frame(data, box)
    return None if frame is None else np.asarray(frame)
