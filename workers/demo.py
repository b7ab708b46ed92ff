"""Sample works and demo uploads, drawn by code at run time.

Nothing here is copied from anywhere: every image is generated from a fixed
seed, so the demo is reproducible and free of licence questions (the
generated images are part of artwatch, Apache-2.0).

The demo uploads mimic what turns up on image sites: a cropped and
recompressed copy of an artwork, a mirrored and recoloured copy, a logo
printed on a "product photo", and unrelated pictures that must not match.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

__all__ = ["DemoUpload", "SampleWork", "demo_uploads", "sample_works"]


@dataclass(frozen=True)
class SampleWork:
    external_id: str
    title: str
    kind: str  # "logo" | "artwork"
    data: bytes
    filename: str


@dataclass(frozen=True)
class DemoUpload:
    data: bytes
    content_type: str
    text: str
    author: str
    copies: str | None  # external id of the work it copies, for the demo's own summary


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def painting(seed: int, size: tuple[int, int] = (768, 576)) -> Image.Image:
    """An abstract painting: layered strokes, discs and polygons with texture."""
    rng = random.Random(seed)
    w, h = size
    top = tuple(rng.randrange(40, 220) for _ in range(3))
    bottom = tuple(rng.randrange(40, 220) for _ in range(3))
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / (h - 1)
        draw.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=False)))
    for _ in range(70):
        kind = rng.random()
        colour = tuple(rng.randrange(0, 256) for _ in range(3))
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(8, 90)
        if kind < 0.35:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0), width=rng.randrange(1, 4))
        elif kind < 0.7:
            pts = [(x + rng.randrange(-r, r) * 2, y + rng.randrange(-r, r) * 2) for _ in range(rng.randrange(3, 7))]
            draw.polygon(pts, fill=colour, outline=(20, 20, 20))
        else:
            pts = [(x, y)]
            for _ in range(6):
                x += rng.randrange(-80, 80)
                y += rng.randrange(-80, 80)
                pts.append((x, y))
            draw.line(pts, fill=colour, width=rng.randrange(3, 14), joint="curve")
    return img.filter(ImageFilter.SMOOTH_MORE)


def logo(seed: int, text: str, size: int = 512) -> Image.Image:
    """A flat logo with transparency: an emblem and a wordmark."""
    rng = random.Random(seed)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    main = (*(rng.randrange(0, 200) for _ in range(3)), 255)
    accent = (*(rng.randrange(100, 256) for _ in range(3)), 255)
    cx, cy, r = size // 2, int(size * 0.4), int(size * 0.3)
    n = rng.choice([5, 6, 8])
    star = []
    for i in range(2 * n):
        rad = r if i % 2 == 0 else r * 0.5
        ang = math.pi * i / n - math.pi / 2
        star.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    draw.polygon(star, fill=main)
    draw.ellipse([cx - r // 3, cy - r // 3, cx + r // 3, cy + r // 3], fill=accent)
    draw.arc([cx - r - 12, cy - r - 12, cx + r + 12, cy + r + 12], 200, 520, fill=main, width=10)
    font = _font(size // 8)
    draw.text((cx, int(size * 0.85)), text, fill=main, font=font, anchor="mm")
    return img


def badge(seed: int, text: str, size: int = 512) -> Image.Image:
    """A logo of another design family: a striped roundel over a wordmark."""
    rng = random.Random(seed)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    colour = (*(rng.randrange(0, 180) for _ in range(3)), 255)
    box = [size * 0.2, size * 0.08, size * 0.8, size * 0.68]
    draw.rounded_rectangle(box, radius=size // 10, fill=colour)
    for i in range(5):
        y = box[1] + (i + 1) * (box[3] - box[1]) / 6
        draw.line([(box[0] + 20, y), (box[2] - 20, y)], fill=(255, 255, 255, 255), width=size // 40)
    draw.text((size // 2, int(size * 0.84)), text, fill=colour, font=_font(size // 10), anchor="mm")
    return img


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """An unrelated 'photo': soft landscape bands and blurred blobs."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(rng.randrange(120, 230) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    y = h // 3
    for _ in range(5):
        colour = tuple(rng.randrange(30, 200) for _ in range(3))
        pts = [(0, h)] + [(x, y + rng.randrange(-30, 30)) for x in range(0, w + 64, 64)] + [(w, h)]
        draw.polygon(pts, fill=colour)
        y += h // 8
    for _ in range(12):
        x, yy, r = rng.randrange(w), rng.randrange(h), rng.randrange(10, 60)
        draw.ellipse([x - r, yy - r, x + r, yy + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img.filter(ImageFilter.GaussianBlur(2))


def sample_works() -> list[SampleWork]:
    return [
        SampleWork("demo-art-1", "Harbour at Dusk", "artwork", _jpeg(painting(11), 92), "harbour-at-dusk.jpg"),
        SampleWork("demo-art-2", "Orchard Study", "artwork", _jpeg(painting(22), 92), "orchard-study.jpg"),
        SampleWork("demo-logo-1", "Bluefinch Bakery logo", "logo", _png(logo(33, "BLUEFINCH")), "bluefinch.png"),
        SampleWork("demo-logo-2", "Kestrel Cycles logo", "logo", _png(logo(44, "KESTREL")), "kestrel.png"),
    ]


def _product_shot(work_logo: Image.Image, seed: int) -> Image.Image:
    """The logo printed on a T-shirt-like panel in a photo, slightly rotated."""
    scene = photo(seed, (640, 480))
    shirt = Image.new("RGB", (300, 340), (235, 235, 228))
    mark = work_logo.resize((200, 200))
    shirt.paste(mark, (50, 40), mark)
    shirt = shirt.rotate(6, expand=True, fillcolor=(0, 0, 0))
    mask = Image.new("L", (300, 340), 255).rotate(6, expand=True)
    scene.paste(shirt, (170, 80), mask)
    return scene


def demo_uploads() -> list[DemoUpload]:
    art1, art2 = painting(11), painting(22)
    logo1 = logo(33, "BLUEFINCH")
    crop = art1.crop((90, 60, 700, 520)).resize((480, 362))
    recolour = ImageOps.mirror(ImageEnhance.Color(art2).enhance(1.6)).resize((512, 384))
    return [
        DemoUpload(_jpeg(crop, 70), "image/jpeg", "new wallpaper I found #art", "pixelpirate", "demo-art-1"),
        DemoUpload(_jpeg(recolour, 80), "image/jpeg", "my latest painting!! (not really)", "copycat", "demo-art-2"),
        DemoUpload(
            _jpeg(_product_shot(logo1, 5), 85), "image/jpeg", "Shirts for sale, DM me", "teeshop", "demo-logo-1"
        ),
        DemoUpload(_jpeg(photo(101)), "image/jpeg", "sunset over the hills", "hiker", None),
        DemoUpload(_jpeg(painting(999)), "image/jpeg", "my own doodle", "doodler", None),
        DemoUpload(_png(badge(777, "OTHERCO")), "image/png", "our new brand", "otherco", None),
    ]
