"""Every image the README shows is in the repository, is a real PNG and stays small."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _images(markdown: str) -> list[str]:
    """Local image paths: Markdown ![..](path) and HTML <img src="path">, web addresses left out."""
    found = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", markdown) + re.findall(r'<img[^>]*\ssrc="([^"]+)"', markdown)
    return [p for p in found if not re.match(r"^[a-z]+:", p)]


def test_every_image_the_readme_references_exists() -> None:
    images = _images((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(images) >= 2, images  # the issue asks for two screenshots
    for rel in images:
        path = ROOT / rel
        assert path.is_file(), f"README.md shows {rel}, which is not in the repository"
        assert path.stat().st_size < 250_000, f"{rel} is {path.stat().st_size} bytes"
        with Image.open(path) as im:
            im.verify()


def test_the_image_finder_sees_both_forms() -> None:
    text = '![a](docs/a.png) <img alt="b" src="docs/b.png"> ![c](https://example.com/c.png)'
    assert _images(text) == ["docs/a.png", "docs/b.png"]
