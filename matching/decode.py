"""Decode an image once, safely, at the size the signals need.

Contract of :func:`decode_image`:

- Accepted: JPEG (and MPO), PNG (8/16-bit, palette, alpha, APNG), WebP, GIF,
  BMP, TIFF, HEIC/HEIF (pillow-heif), AVIF and SVG. Only these Pillow plugins
  are ever tried, so no data reaches risky decoders (EPS runs Ghostscript).
- Animations give their first frame. EXIF orientation is applied.
- The result is at most ``max_side`` pixels on its long side; JPEGs are
  decoded with draft mode (DCT scaling), so a 4000 px photo never
  materialises at full size.
- Alpha is flattened onto white, and also onto black when the image has any
  transparent pixel: a white logo on transparency vanishes on white.
- SVG is rendered by :func:`matching.svg.render_svg`, the project's one SVG
  renderer: sanitised (no entities, scripts, external references; nesting
  and filters bounded), then rasterised by resvg in a child process with a
  CPU, memory and time budget, so it reads no file and no network and a
  hostile file costs at most that budget (:class:`ImageTooComplex` past it).
- More than ``max_pixels`` pixels (declared size, before decoding) raises
  :class:`ImageTooLarge`; corrupt or truncated data raises
  :class:`DecodeError`; anything else unrecognised raises
  :class:`UnsupportedFormat`. All of these are :class:`ImageError` subclasses
  whose message names the file. No other exception escapes for bad input.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from matching.errors import DecodeError, ImageTooLarge, UnsupportedFormat
from matching.svg import looks_like_svg, render_svg

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "decode_image",
]

pillow_heif.register_heif_opener()

DEFAULT_MAX_PIXELS = 64_000_000
# Pillow plugins we let see untrusted bytes.
_WANTED = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "HEIF", "AVIF")
Image.init()
_FORMATS = tuple(f for f in _WANTED if f in Image.OPEN)
# Rendering size of an SVG when the caller asks for no limit.
_SVG_DEFAULT_SIDE = 1024

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WEBP"),
    (b"ftyp", 4, "HEIF/AVIF"),
)


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image, ready for every signal.

    ``rgb`` is ``(h, w, 3)`` uint8, alpha flattened onto white. ``rgb_on_black``
    is the same flattened onto black, present only when the source had
    transparent pixels. ``width``/``height`` are the source's size after EXIF
    orientation (SVG: the rendered size); ``rgb`` may be smaller. Arrays are
    read-only.
    """

    rgb: np.ndarray
    rgb_on_black: np.ndarray | None
    width: int
    height: int
    has_alpha: bool
    format: str
    name: str = ""

    @property
    def scale(self) -> float:
        """Pixels of ``rgb`` per source pixel (<= 1); maps regions back to the source."""
        return self.rgb.shape[1] / self.width if self.width else 1.0

    def variants(self) -> list[np.ndarray]:
        """The flattened renderings: on white, then on black when there is alpha."""
        return [self.rgb] if self.rgb_on_black is None else [self.rgb, self.rgb_on_black]


def decode_image(
    data: bytes,
    *,
    name: str = "",
    max_side: int | None = 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode ``data``; see the module docstring for the contract."""
    label = name or "<bytes>"
    if not data:
        raise DecodeError(label, "empty file")
    if max_side is not None and max_side < 1:
        raise ValueError("max_side must be positive or None")
    if looks_like_svg(data):
        return _decode_svg(data, label, max_side, max_pixels)
    return _decode_raster(data, label, max_side, max_pixels)


# --- raster -----------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    for magic, offset, fmt in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return fmt
    return None


def _decode_raster(data: bytes, label: str, max_side: int | None, max_pixels: int) -> DecodedImage:
    sniffed = _sniff(data)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel cap below; Pillow's warning would be an
            # error under strict warning filters.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data), formats=_FORMATS)
            fmt = str(im.format or sniffed or "unknown")
            w, h = im.size
            if w < 1 or h < 1:
                raise DecodeError(label, f"{fmt} declares an empty size {w}x{h}")
            if w * h > max_pixels:
                raise ImageTooLarge(
                    label, f"{fmt} of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}"
                )
            # Animations (GIF, APNG, WebP, multi-page TIFF) open on their first
            # frame; never ask for n_frames, which would scan the whole file.
            orientation = im.getexif().get(0x0112, 1)
            if fmt in ("JPEG", "MPO") and max_side is not None:
                long = max(w, h)
                if long > max_side:
                    k = max_side / long
                    im.draft("RGB", (max(1, int(w * k + 0.999)), max(1, int(h * k + 0.999))))
            im.load()
            im = ImageOps.exif_transpose(im)
    except (DecodeError, ImageTooLarge):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(label, f"decompression bomb refused ({_short(exc)})") from None
    except UnidentifiedImageError:
        if sniffed is not None:
            raise DecodeError(label, f"corrupt {sniffed} data (header not readable)") from None
        raise UnsupportedFormat(label, "not a supported image format " + _supported()) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, TypeError, IndexError,
            KeyError, MemoryError) as exc:
        raise DecodeError(label, f"corrupt or truncated image data ({_short(exc)})") from None
    orig_w, orig_h = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    try:
        return _finish(im, label, fmt, orig_w, orig_h, max_side)
    except (OSError, ValueError) as exc:  # pragma: no cover - lazy decoders failing late
        raise DecodeError(label, f"corrupt image data ({_short(exc)})") from None


def _supported() -> str:
    return "(JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF, SVG)"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB", "1", "I;16", "I") and "transparency" in im.info
    )


def _to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth greyscale to 8-bit L, scaling rather than clipping."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        hi = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8), "L")
    return im


def _finish(
    im: Image.Image, label: str, fmt: str, orig_w: int, orig_h: int, max_side: int | None
) -> DecodedImage:
    alpha = _has_alpha(im)
    if im.mode.startswith("I") or im.mode == "F":
        # 16-bit greyscale (possibly with a tRNS colour): scale, drop tRNS.
        im = _to_8bit(im)
        alpha = False
    im = im.convert("RGBA") if alpha else im.convert("RGB")
    if max_side is not None and max(im.size) > max_side:
        k = max_side / max(im.size)
        size = (max(1, round(im.width * k)), max(1, round(im.height * k)))
        im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(im)
    if arr.ndim != 3 or arr.dtype != np.uint8:  # pragma: no cover - defensive
        raise DecodeError(label, f"unexpected pixel layout {arr.shape} {arr.dtype}")
    on_black: np.ndarray | None = None
    if alpha:
        a = arr[:, :, 3:4].astype(np.uint16)
        if int(a.min()) == 255:
            alpha = False
            rgb = np.ascontiguousarray(arr[:, :, :3])
        else:
            c = arr[:, :, :3].astype(np.uint16) * a
            on_black = ((c + 127) // 255).astype(np.uint8)
            rgb = ((c + (255 - a) * 255 + 127) // 255).astype(np.uint8)
    else:
        rgb = arr if arr.flags.writeable is False else arr.copy()
    rgb.setflags(write=False)
    if on_black is not None:
        on_black.setflags(write=False)
    return DecodedImage(rgb, on_black, orig_w, orig_h, alpha, fmt, label)


# --- SVG --------------------------------------------------------------------


def _decode_svg(data: bytes, label: str, max_side: int | None, max_pixels: int) -> DecodedImage:
    png = render_svg(data, name=label, side=max_side or _SVG_DEFAULT_SIDE, max_pixels=max_pixels)
    try:
        im = Image.open(io.BytesIO(png), formats=("PNG",))
        if im.width * im.height > max_pixels:
            raise ImageTooLarge(label, f"SVG renders to {im.width}x{im.height} pixels")
        im.load()
    except (OSError, ValueError) as exc:  # pragma: no cover - resvg output is valid PNG
        raise DecodeError(label, f"SVG render unreadable ({_short(exc)})") from None
    return _finish(im, label, "SVG", im.width, im.height, max_side)
