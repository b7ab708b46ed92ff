"""Shared fixtures for the matching tests: synthetic images, no fixed paths."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CONFORMANCE = Path(__file__).resolve().parents[1] / "data" / "conformance"


def smooth_image(seed: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A photo-like RGB image: smooth random colour fields plus a few shapes.

    PDQ needs low-frequency structure to give a high-quality hash; white
    noise would not do.
    """
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    a = np.asarray(im).copy()
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        a[y0 : y0 + int(rng.integers(15, 40)), x0 : x0 + int(rng.integers(15, 40))] = rng.integers(0, 256, 3)
    return a


def encode(a: np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def make_image() -> Callable[..., np.ndarray]:
    return smooth_image


@pytest.fixture(scope="session")
def pdq_conformance_dir() -> Path:
    import os

    d = Path(os.environ.get("ARTWATCH_TEST_PDQ_DIR", CONFORMANCE / "pdq"))
    if not (d / "expected.csv").exists():
        pytest.fail(f"PDQ conformance data not found at {d}: it ships in tests/data/conformance/pdq")
    return d
