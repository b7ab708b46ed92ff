"""decode_image: every accepted format, alpha handling, and every bad case."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matching.decode import DecodedImage, decode_image
from matching.errors import DecodeError, ImageError, ImageTooLarge, UnsupportedFormat


def _encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _pattern(w: int = 64, h: int = 48) -> Image.Image:
    """Left half red, right half blue: orientation and colour are both visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (220, 20, 20)
    a[:, w // 2 :] = (20, 20, 220)
    return Image.fromarray(a, "RGB")


def _logo_rgba(w: int = 40, h: int = 40, colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A solid square logo in ``colour`` on a fully transparent background."""
    a = np.zeros((h, w, 4), np.uint8)
    a[10:30, 10:30, :3] = colour
    a[10:30, 10:30, 3] = 255
    return Image.fromarray(a, "RGBA")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _raw_png(width: int, height: int, depth: int, colour_type: int, rows: bytes | None = None) -> bytes:
    """A minimal PNG with any header, so tests can write 16-bit RGB and bombs."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00")
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _assert_rgb(d: DecodedImage) -> None:
    assert d.rgb.dtype == np.uint8 and d.rgb.ndim == 3 and d.rgb.shape[2] == 3
    assert not d.rgb.flags.writeable


def _is_red(px: np.ndarray) -> bool:
    return bool(px[0] > 150 and px[1] < 90 and px[2] < 90)


def _is_blue(px: np.ndarray) -> bool:
    return bool(px[2] > 150 and px[0] < 90 and px[1] < 90)


# --- formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"quality": 95}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("HEIF", {"quality": 95}),
        ("AVIF", {"quality": 95}),
        ("GIF", {}),
    ],
)
def test_each_raster_format_decodes_to_the_same_picture(fmt: str, kw: dict[str, object]) -> None:
    data = _encode(_pattern(), fmt, **kw)
    d = decode_image(data, name=f"x.{fmt.lower()}")
    _assert_rgb(d)
    assert d.rgb.shape == (48, 64, 3)
    assert (d.width, d.height) == (64, 48)
    assert _is_red(d.rgb[24, 8]) and _is_blue(d.rgb[24, 56])
    assert d.has_alpha is False and d.rgb_on_black is None


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _encode(_pattern(64, 48), "JPEG", quality=95, exif=exif)
    d = decode_image(data, name="rot.jpg")
    assert d.rgb.shape == (64, 48, 3)
    assert (d.width, d.height) == (48, 64)
    # Left (red) half ends up at the top after a 90 degree clockwise turn.
    assert _is_red(d.rgb[8, 24]) and _is_blue(d.rgb[56, 24])


def test_large_jpeg_is_reduced_to_max_side() -> None:
    big = _pattern(3000, 2000).resize((3000, 2000))
    data = _encode(big, "JPEG", quality=90)
    d = decode_image(data, name="big.jpg", max_side=512)
    assert max(d.rgb.shape[:2]) == 512
    assert d.rgb.shape[:2] == (341, 512)
    assert (d.width, d.height) == (3000, 2000)
    assert d.scale == pytest.approx(512 / 3000)
    assert _is_red(d.rgb[170, 50]) and _is_blue(d.rgb[170, 460])


def test_max_side_none_keeps_full_size() -> None:
    d = decode_image(_encode(_pattern(1500, 100), "PNG"), max_side=None)
    assert d.rgb.shape == (100, 1500, 3)


def test_png_16bit_grey_is_scaled_not_clipped() -> None:
    a = np.array([[0, 32896, 65535, 65535]], dtype=np.uint16)
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    d = decode_image(_encode(im, "PNG"), name="g16.png")
    assert d.rgb[0, :, 0].tolist() == [0, 128, 255, 255]


def test_png_16bit_rgb() -> None:
    # One row: a red pixel at full 16-bit intensity, then mid grey.
    px = struct.pack(">HHH", 65535, 0, 0) + struct.pack(">HHH", 32896, 32896, 32896)
    data = _raw_png(2, 1, 16, 2, b"\x00" + px)
    d = decode_image(data, name="rgb16.png")
    assert d.rgb[0, 0].tolist() == [255, 0, 0]
    assert d.rgb[0, 1].tolist() == [128, 128, 128]


def test_png_palette_and_palette_transparency() -> None:
    p = _pattern().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    d = decode_image(_encode(p, "PNG"), name="pal.png")
    assert _is_red(d.rgb[24, 8]) and d.has_alpha is False

    logo = _logo_rgba(colour=(200, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    a = np.zeros((40, 40), np.uint8)
    a[10:30, 10:30] = 1
    pal = Image.fromarray(a, "P")
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    d = decode_image(_encode(pal, "PNG", transparency=0), name="paltrns.png")
    assert d.has_alpha is True
    assert d.rgb[0, 0].tolist() == [255, 255, 255]  # transparent index on white
    assert d.rgb_on_black is not None and d.rgb_on_black[0, 0].tolist() == [0, 0, 0]
    assert d.rgb[20, 20].tolist() == [200, 0, 0]
    del logo


def test_white_logo_on_transparency_survives_on_black() -> None:
    d = decode_image(_encode(_logo_rgba(), "PNG"), name="logo.png")
    assert d.has_alpha is True
    assert (d.rgb == 255).all()  # vanishes on white, as expected
    assert d.rgb_on_black is not None
    assert d.rgb_on_black[20, 20].tolist() == [255, 255, 255]
    assert d.rgb_on_black[0, 0].tolist() == [0, 0, 0]
    assert not d.rgb_on_black.flags.writeable
    assert len(d.variants()) == 2


def test_half_transparent_pixels_blend() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = 128
    d = decode_image(_encode(Image.fromarray(a, "RGBA"), "PNG"))
    assert d.rgb[0, 0].tolist() == [227, 127, 127]
    assert d.rgb_on_black is not None and d.rgb_on_black[0, 0].tolist() == [100, 0, 0]


def test_opaque_alpha_channel_counts_as_no_alpha() -> None:
    im = _pattern().convert("RGBA")
    d = decode_image(_encode(im, "PNG"))
    assert d.has_alpha is False and d.rgb_on_black is None


def test_webp_with_alpha() -> None:
    d = decode_image(_encode(_logo_rgba(), "WEBP", lossless=True), name="logo.webp")
    assert d.has_alpha and d.rgb_on_black is not None
    assert d.rgb_on_black[20, 20].tolist() == [255, 255, 255]


def _frames(data: bytes) -> int:
    """How many frames Pillow sees (only the plugins of animated formats define n_frames)."""
    return int(getattr(Image.open(io.BytesIO(data)), "n_frames", 1))


def test_gif_and_apng_give_first_frame() -> None:
    red = Image.new("RGB", (16, 16), (220, 20, 20))
    blue = Image.new("RGB", (16, 16), (20, 20, 220))
    gif = _encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert _frames(gif) == 2
    d = decode_image(gif, name="anim.gif")
    assert _is_red(d.rgb[8, 8])
    apng = _encode(red, "PNG", save_all=True, append_images=[blue], duration=100)
    assert _frames(apng) == 2
    d = decode_image(apng, name="anim.png")
    assert _is_red(d.rgb[8, 8])


def test_gif_transparency() -> None:
    a = np.zeros((16, 16), np.uint8)
    a[4:12, 4:12] = 1
    im = Image.fromarray(a, "P")
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    d = decode_image(_encode(im, "GIF", transparency=0), name="t.gif")
    assert d.has_alpha and d.rgb_on_black is not None
    assert d.rgb_on_black[8, 8].tolist() == [255, 255, 255]
    assert d.rgb_on_black[0, 0].tolist() == [0, 0, 0]


def test_cmyk_jpeg_and_greyscale() -> None:
    d = decode_image(_encode(_pattern().convert("CMYK"), "JPEG", quality=95), name="cmyk.jpg")
    assert _is_red(d.rgb[24, 8])
    d = decode_image(_encode(_pattern().convert("L"), "PNG"), name="l.png")
    assert d.rgb.shape == (48, 64, 3) and d.rgb[0, 0, 0] == d.rgb[0, 0, 1]


# --- SVG ----------------------------------------------------------------------

_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
    'width="200" height="100" viewBox="0 0 200 100">{body}</svg>'
)


def test_svg_rasterised_at_max_side_with_alpha() -> None:
    svg = _SVG.format(body='<rect x="0" y="0" width="100" height="100" fill="#ff0000"/>')
    d = decode_image(svg.encode(), name="logo.svg", max_side=400)
    assert d.format == "SVG"
    assert d.rgb.shape == (200, 400, 3)
    assert d.rgb[100, 100].tolist() == [255, 0, 0]
    assert d.has_alpha and d.rgb_on_black is not None
    assert d.rgb[100, 300].tolist() == [255, 255, 255]
    assert d.rgb_on_black[100, 300].tolist() == [0, 0, 0]


def test_svg_viewbox_only_and_plain_doctype() -> None:
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        '"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 20">'
        '<rect width="10" height="20" fill="blue"/></svg>'
    )
    d = decode_image(svg.encode(), name="v.svg", max_side=100)
    assert d.rgb.shape == (100, 50, 3)
    assert d.rgb[50, 25].tolist() == [0, 0, 255]


def test_svg_external_references_are_not_followed(tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    Image.new("RGB", (10, 10), (255, 0, 0)).save(red)
    body = (
        f'<image x="0" y="0" width="200" height="100" xlink:href="{red}"/>'
        f'<image x="0" y="0" width="200" height="100" href="file://{red}"/>'
        '<image x="0" y="0" width="200" height="100" href="http://127.0.0.1:9/x.png"/>'
        f'<rect width="200" height="100" style="fill: url(file://{red})"/>'
        '<script>alert(1)</script>'
    )
    d = decode_image(_SVG.format(body=body).encode(), name="evil.svg", max_side=200)
    assert not _is_red(d.rgb[50, 100])


def test_svg_inline_raster_data_uri_is_kept() -> None:
    import base64

    png = base64.b64encode(_encode(Image.new("RGB", (4, 4), (255, 0, 0)), "PNG")).decode()
    body = f'<image width="200" height="100" preserveAspectRatio="none" href="data:image/png;base64,{png}"/>'
    d = decode_image(_SVG.format(body=body).encode(), name="inline.svg", max_side=200)
    assert _is_red(d.rgb[50, 100])


@pytest.mark.parametrize(
    "svg",
    [
        # billion laughs
        ('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        '<svg xmlns="http://www.w3.org/2000/svg"><text>&b;</text></svg>'),
        # external entity
        ('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>'),
    ],
)
def test_svg_entities_are_refused(svg: str) -> None:
    with pytest.raises(DecodeError, match=r"evil\.svg"):
        decode_image(svg.encode(), name="evil.svg")


def test_malformed_svg() -> None:
    with pytest.raises(DecodeError, match=r"bad\.svg: malformed SVG"):
        decode_image(b'<svg xmlns="http://www.w3.org/2000/svg"><rect', name="bad.svg")


# --- bad input ----------------------------------------------------------------


def test_empty_file() -> None:
    with pytest.raises(DecodeError, match=r"^e\.jpg: empty file$"):
        decode_image(b"", name="e.jpg")


def test_not_an_image() -> None:
    with pytest.raises(UnsupportedFormat, match=r"notes\.txt: not a supported image format"):
        decode_image(b"hello, world" * 10, name="notes.txt")


def test_unlisted_format_is_never_handed_to_its_decoder() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(UnsupportedFormat, match=r"x\.eps"):
        decode_image(eps, name="x.eps")
    pcx = _encode(_pattern(), "PCX")
    with pytest.raises(UnsupportedFormat):
        decode_image(pcx, name="x.pcx")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "HEIF"])
def test_truncated_files_raise_decode_error(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    with pytest.raises(DecodeError, match=f"^cut.{fmt.lower()}: "):
        decode_image(data[: len(data) // 2], name=f"cut.{fmt.lower()}")


def test_header_only_jpeg_is_corrupt_not_unsupported() -> None:
    with pytest.raises(DecodeError, match=r"^h\.jpg: corrupt"):
        decode_image(b"\xff\xd8\xff\xe0\x00\x10JFIF", name="h.jpg")


def test_corrupt_png_body() -> None:
    data = bytearray(_encode(_pattern(), "PNG"))
    data[60:80] = b"\x00" * 20
    with pytest.raises(DecodeError, match=r"bad\.png"):
        decode_image(bytes(data), name="bad.png")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # Declares 100000 x 100000 pixels in a few dozen bytes.
    bomb = _raw_png(10_000, 10_000, 8, 2)
    with pytest.raises(ImageTooLarge, match=r"^bomb.png: PNG of 10000x10000 = 100000000 pixels is over"):
        decode_image(bomb, name="bomb.png")
    # Far past Pillow's own limit: still our error, never Pillow's.
    with pytest.raises(ImageTooLarge, match=r"^huge.png: decompression bomb refused"):
        decode_image(_raw_png(100_000, 100_000, 8, 2), name="huge.png")
    gif = bytearray(_encode(Image.new("P", (4, 4)), "GIF"))
    gif[6:10] = struct.pack("<HH", 30000, 30000)
    with pytest.raises(ImageTooLarge, match=r"^bomb\.gif: "):
        decode_image(bytes(gif), name="bomb.gif")


def test_pixel_cap_is_a_parameter() -> None:
    data = _encode(_pattern(64, 48), "PNG")
    decode_image(data, max_pixels=64 * 48)
    with pytest.raises(ImageTooLarge, match="over the limit of 3000"):
        decode_image(data, name="p.png", max_pixels=3000)


def test_every_error_is_an_image_error_naming_the_file() -> None:
    for exc in (DecodeError, ImageTooLarge, UnsupportedFormat):
        assert issubclass(exc, ImageError)
    with pytest.raises(ImageError) as info:
        decode_image(b"\x89PNG\r\n\x1a\nrubbish", name="dir/f.png")
    assert str(info.value).startswith("dir/f.png: ")
    assert info.value.name == "dir/f.png"
    with pytest.raises(ImageError, match=r"^<bytes>: "):
        decode_image(b"\x89PNG\r\n\x1a\nrubbish")
