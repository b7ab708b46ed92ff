"""Transforms of the held-out split that the dev split never applies.

Loaded by ``../shared/bench/build.py`` through the recipe's
``extra_transforms`` key; it registers whole-image ops and one partial
composer with the builder's own ``transforms`` module. Every random choice
comes from the ``rng`` the builder passes, so a build is reproducible.
"""

import math

import numpy as np
import transforms as T  # the builder's module (../shared/bench/transforms.py)
from PIL import Image, ImageDraw, ImageFilter, ImageOps


@T.op("perspective")
def t_perspective(img, rng, ctx):
    """The picture photographed at an angle: each corner moved by up to 12 %."""
    w, h = img.size
    d = 0.12
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(x + rng.uniform(-d, d) * w * (0.5 if x else 1), y + rng.uniform(-d, d) * h * (0.5 if y else 1))
           for x, y in src]
    dst = [(min(max(x, -0.1 * w), 1.1 * w), min(max(y, -0.1 * h), 1.1 * h)) for x, y in dst]
    # coefficients mapping output pixels back to input pixels
    a = []
    for (xo, yo), (xi, yi) in zip(dst, src, strict=True):
        a.append([xo, yo, 1, 0, 0, 0, -xi * xo, -xi * yo])
        a.append([0, 0, 0, xo, yo, 1, -yi * xo, -yi * yo])
    b = np.array([c for p in src for c in p], np.float64)
    coeffs = np.linalg.solve(np.array(a, np.float64), b)
    fill = rng.choice([(0, 0, 0), (255, 255, 255), T.random_colour(rng)])
    return img.convert("RGB").transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC, fillcolor=fill)


@T.op("posterize")
def t_posterize(img, rng, ctx):
    return ImageOps.posterize(img.convert("RGB"), rng.randint(2, 4))


@T.op("sharpen")
def t_sharpen(img, rng, ctx):
    return img.convert("RGB").filter(ImageFilter.UnsharpMask(radius=rng.uniform(1.5, 3.0),
                                                             percent=rng.randint(150, 320), threshold=2))


@T.op("hue_shift")
def t_hue_shift(img, rng, ctx):
    hsv = np.asarray(img.convert("RGB").convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + rng.randint(30, 225)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


@T.op("vignette")
def t_vignette(img, rng, ctx):
    rgb = np.asarray(img.convert("RGB"), np.float32)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / math.sqrt(2)
    k = rng.uniform(0.5, 0.85)
    shade = 1.0 - k * np.clip(r, 0, 1) ** 2
    return Image.fromarray(np.clip(rgb * shade[..., None], 0, 255).astype(np.uint8), "RGB")


@T.op("rescan")
def t_rescan(img, rng, ctx):
    """Down to a thumbnail, back up, and re-encoded twice at low quality."""
    w, h = img.size
    s = rng.uniform(0.25, 0.45)
    small = img.convert("RGB").resize((max(24, round(w * s)), max(24, round(h * s))), Image.BILINEAR)
    out = T.jpeg_roundtrip(small.resize((w, h), Image.BICUBIC), rng.randint(30, 50))
    return T.jpeg_roundtrip(out, rng.randint(20, 45))


@T.op("watermark", stage=2)
def t_watermark(img, rng, ctx):
    """A site's name tiled diagonally over the picture, half transparent."""
    base = img.convert("RGBA")
    w, h = base.size
    layer = Image.new("RGBA", (w * 2, h * 2), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    word = rng.choice(T.SITE_WORDS).upper() + ".COM"
    font = ctx.font(ctx.font_path(rng, ui=True), max(10, int(min(w, h) * rng.uniform(0.06, 0.11))))
    col = (*rng.choice([(255, 255, 255), (0, 0, 0), (200, 200, 200)]), rng.randint(70, 130))
    step_x, step_y = int(w * 0.45), int(h * 0.22)
    for y in range(0, h * 2, max(12, step_y)):
        for x in range((y // max(1, step_y)) % 2 * step_x // 2, w * 2, max(12, step_x)):
            d.text((x, y), word, font=font, fill=col)
    layer = layer.rotate(rng.uniform(20, 40), resample=Image.BICUBIC)
    left, top = w // 2, h // 2
    base.alpha_composite(layer.crop((left, top, left + w, top + h)))
    return base.convert("RGB")


@T.op("sticker", stage=3, exclusive="layout")
def t_sticker(img, rng, ctx):
    """A die-cut sticker: thick white border with rounded corners and a shadow, on a coloured card."""
    pic = img.convert("RGBA")
    w, h = pic.size
    b = max(4, int(min(w, h) * rng.uniform(0.04, 0.08)))
    sticker = Image.new("RGBA", (w + 2 * b, h + 2 * b), (0, 0, 0, 0))
    ImageDraw.Draw(sticker).rounded_rectangle((0, 0, w + 2 * b - 1, h + 2 * b - 1), radius=b * 3,
                                              fill=(255, 255, 255, 255))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, w - 1, h - 1), radius=b * 2, fill=255)
    pic.putalpha(mask)
    sticker.alpha_composite(pic, (b, b))
    if rng.random() < 0.5:
        sticker = sticker.rotate(rng.uniform(-12, 12), resample=Image.BICUBIC, expand=True)
    pad = int(max(sticker.size) * rng.uniform(0.08, 0.2))
    W, H = sticker.size[0] + 2 * pad, sticker.size[1] + 2 * pad
    card = Image.new("RGBA", (W, H), (*T.random_colour(rng), 255))
    sh = Image.new("RGBA", sticker.size, (0, 0, 0, 0))
    sh.putalpha(sticker.getchannel("A").point(lambda v: int(v * 0.5)))
    card.alpha_composite(sh.filter(ImageFilter.GaussianBlur(5)), (pad + 4, pad + 5))
    card.alpha_composite(sticker, (pad, pad))
    return card.convert("RGB")


@T.op("collage", stage=3, exclusive="layout")
def t_collage(img, rng, ctx):
    """The picture as one cell of a 2 x 2 board of other pictures."""
    side = T.canvas_side(rng)
    cell = side // 2
    gap = max(2, side // 80)
    board = Image.new("RGB", (cell * 2 + gap * 3, cell * 2 + gap * 3), rng.choice([(255, 255, 255), (20, 20, 20)]))
    at = rng.randrange(4)
    for i in range(4):
        src = img.convert("RGB") if i == at else ctx.scene(rng)
        tile = ImageOps.fit(src, (cell, cell), Image.LANCZOS) if i != at else T.fit_long(src, cell)
        x = gap + (i % 2) * (cell + gap) + (cell - tile.size[0]) // 2
        y = gap + (i // 2) * (cell + gap) + (cell - tile.size[1]) // 2
        board.paste(tile, (x, y))
    return board


@T.composer("paste_mug")
def c_paste_mug(obj, rng, ctx):
    """A transparent object printed on a mug or bottle: bent horizontally, shaded like a cylinder."""
    names = ["paste_mug"]
    canvas = T._scene_canvas(rng, ctx)
    o = T._scale_to_area(T.alpha_bbox_crop(obj), canvas.size, T._area(rng, ctx))
    arr = np.asarray(o.convert("RGBA"), np.float32)
    h, w = arr.shape[:2]
    # cylinder: output column u shows source column w/2 + R sin(theta)
    u = np.arange(w, dtype=np.float32)
    theta = (u / max(1, w - 1) - 0.5) * rng.uniform(1.6, 2.4)
    src = (np.sin(theta) / math.sin(abs(theta[0]) or 1.0) * 0.5 + 0.5) * (w - 1)
    bent = arr[:, np.clip(np.round(src).astype(int), 0, w - 1)]
    shade = (0.65 + 0.35 * np.cos(theta))[None, :, None]
    bent[..., :3] = np.clip(bent[..., :3] * shade, 0, 255)
    body_col = T.random_colour(rng)
    pad_x, pad_y = int(w * 0.2), int(h * 0.3)
    body = Image.new("RGBA", (w + 2 * pad_x, h + 2 * pad_y), (0, 0, 0, 0))
    bw, bh = body.size
    cols = np.arange(bw, dtype=np.float32)
    bshade = 0.7 + 0.3 * np.cos((cols / max(1, bw - 1) - 0.5) * 2.2)
    b = np.zeros((bh, bw, 4), np.float32)
    b[..., :3] = np.array(body_col, np.float32)[None, None, :] * bshade[None, :, None]
    b[..., 3] = 255
    body = Image.fromarray(b.astype(np.uint8), "RGBA")
    body.alpha_composite(Image.fromarray(bent.astype(np.uint8), "RGBA"), (pad_x, pad_y))
    body = T._fit_inside(T._maybe_tilt(body, rng, ctx, names), canvas.size)
    x, y = T._position(rng, canvas.size, body.size)
    base = canvas.convert("RGBA")
    base.alpha_composite(body, (x, y))
    return base.convert("RGB"), names
