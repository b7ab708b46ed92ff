"""Hostile SVG files from issue 16, built in code so every entry point's test feeds the same bytes."""

from __future__ import annotations

from pathlib import Path

__all__ = ["LOGO_SVG", "deep_svg", "file_image_svg", "turbulence_svg"]

#: A normal logo: shapes and a gradient, no text, as an owner registers one.
LOGO_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="240" height="160" viewBox="0 0 240 160">'
    b'<defs><linearGradient id="g" x1="0" x2="1"><stop offset="0" stop-color="#c33"/>'
    b'<stop offset="1" stop-color="#36c"/></linearGradient></defs>'
    b'<rect x="8" y="8" width="224" height="144" rx="24" fill="url(#g)"/>'
    b'<circle cx="70" cy="80" r="40" fill="#fff"/><path d="M130 40 L210 80 L130 120 Z" fill="#fff"/>'
    b'<rect x="55" y="65" width="30" height="30" fill="#222"/></svg>'
)


def turbulence_svg(filters: int = 16, side: int = 1024) -> bytes:
    """The issue's ``feTurbulence numOctaves="100"`` file, with ``filters`` such layers.

    One layer (about 200 bytes) is the issue's 36 s file and four its 141 s one. Clamped to
    ten octaves, one layer at 1024 px costs about 2 s of CPU here, near the budget, so the
    default of sixteen is what the tests use where the file must be refused on any machine.
    """
    body = "".join(
        f'<filter id="f{i}"><feTurbulence baseFrequency="0.01" numOctaves="100"/></filter>'
        f'<rect width="{side}" height="{side}" filter="url(#f{i})"/>'
        for i in range(filters)
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{side}" height="{side}">{body}</svg>'.encode()


def deep_svg(depth: int = 100_000) -> bytes:
    """``depth`` nested ``<g>`` (the issue's 700 KB file at 100,000)."""
    return (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        + b"<g>" * depth
        + b'<rect width="64" height="64" fill="red"/>'
        + b"</g>" * depth
        + b"</svg>"
    )


def file_image_svg(png_path: Path) -> bytes:
    """An SVG whose ``<image>`` names a PNG on this machine, by path and by file: URI, over white."""
    p = str(png_path)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'width="200" height="200">'
        '<rect width="200" height="200" fill="#ffffff"/>'
        f'<image href="{p}" width="200" height="200"/>'
        f'<image xlink:href="file://{p}" width="200" height="200"/>'
        "</svg>"
    ).encode()
