"""The one SVG renderer (matching.svg): sanitised, bounded in CPU, memory and time, reading no file.

The hostile files are issue 16's; they go through ``decode_image``, the call
every matching entry point makes, and through ``render_svg`` directly.
"""

from __future__ import annotations

import io
import re
import resource
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matching.decode import decode_image
from matching.errors import DecodeError, ImageTooComplex, ImageTooLarge
from matching.svg import MAX_DEPTH, MAX_OCTAVES, RenderLimits, render_svg, sanitise_svg
from tests.hostile import LOGO_SVG, deep_svg, file_image_svg, turbulence_svg


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


WORDMARK_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="300" height="80">'
                b'<text x="10" y="50" font-size="40" font-family="sans-serif">ACME Co</text></svg>')


@pytest.mark.parametrize("svg", [LOGO_SVG, WORDMARK_SVG], ids=["shapes", "text"])
def test_a_benign_logo_renders_exactly_as_resvg_renders_it_in_process(svg: bytes) -> None:
    import resvg_py

    text = sanitise_svg(svg).text
    assert render_svg(svg, side=1024) == bytes(resvg_py.svg_to_bytes(svg_string=text, width=1024))


def test_turbulence_octaves_are_clamped_and_the_render_is_unchanged() -> None:
    small = turbulence_svg(side=64)
    assert f'numOctaves="{MAX_OCTAVES}"' in sanitise_svg(small).text
    clamped = small.replace(b'numOctaves="100"', f'numOctaves="{MAX_OCTAVES}"'.encode())
    assert render_svg(small) == render_svg(clamped)


@pytest.mark.parametrize("filters", [1, 4, 16])
def test_a_turbulence_bomb_costs_at_most_two_seconds_of_cpu(filters: int) -> None:
    # Issue 16: 36 s (one filter) and 141 s (four) in process. Now the octaves are clamped
    # and a child renders under RLIMIT_CPU; measured as the child's CPU time, not wall time.
    # One or four layers may fit the budget on a fast machine; sixteen never do.
    before = _child_cpu()
    try:
        decode_image(turbulence_svg(filters), name="turbulence.svg")
        refused = False
    except ImageTooComplex as exc:
        assert re.match(r"turbulence\.svg: SVG (needs more than 2 s of CPU|took longer than)", str(exc))
        refused = True
    assert _child_cpu() - before <= 3.0  # RLIMIT_CPU's soft limit is 2 s; one tick of slack
    assert refused or filters < 16


def test_a_deeply_nested_svg_is_refused_without_recursion() -> None:
    with pytest.raises(ImageTooComplex, match=rf"deep\.svg: SVG nests elements deeper than {MAX_DEPTH}"):
        decode_image(deep_svg(), name="deep.svg")
    assert decode_image(deep_svg(MAX_DEPTH - 2), name="ok.svg").width == 1024  # within the limit


def test_too_many_filter_primitives_are_refused() -> None:
    blur = b'<feGaussianBlur stdDeviation="3"/>' * 65
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><filter id="f">' + blur
           + b'</filter><rect width="64" height="64" filter="url(#f)"/></svg>')
    with pytest.raises(ImageTooComplex, match="more than 64 filter primitives"):
        render_svg(svg, name="blur.svg")


def test_rendering_reads_no_local_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    Image.new("RGB", (50, 50), (0, 255, 0)).save(secret)
    rgb = _rgb(render_svg(file_image_svg(secret)))
    assert rgb.shape == (200, 200, 3)
    assert (rgb == 255).all(), "the local PNG was drawn into the render"
    img = decode_image(file_image_svg(secret), name="x.svg")
    assert (img.rgb == 255).all()


def test_the_cpu_budget_is_enforced_by_the_child() -> None:
    with pytest.raises(ImageTooComplex, match="more than 1 s of CPU"):
        render_svg(turbulence_svg(), name="t.svg", limits=RenderLimits(cpu_seconds=1))


def test_the_wall_deadline_kills_a_slow_child() -> None:
    with pytest.raises(ImageTooComplex, match=r"longer than 0\.2 s"):
        render_svg(turbulence_svg(), name="t.svg", limits=RenderLimits(wall_seconds=0.2))


def test_the_memory_budget_is_enforced_by_the_child() -> None:
    with pytest.raises(ImageTooComplex, match="out of memory"):
        render_svg(LOGO_SVG, name="m.svg", side=8000, limits=RenderLimits(memory_bytes=150 << 20))


def test_a_huge_canvas_is_refused_before_rendering() -> None:
    # At its intrinsic size (what the web app's image_size asks for) this is 10^10 pixels.
    huge = b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><rect width="9" height="9"/></svg>'
    with pytest.raises(ImageTooLarge, match=r"huge\.svg: SVG would render to 100000x100000 pixels"):
        render_svg(huge, name="huge.svg")


def test_resvg_refusing_a_document_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"bad\.svg: SVG cannot be rendered"):
        render_svg(b'<svg xmlns="http://www.w3.org/2000/svg" width="0" height="10"/>', name="bad.svg")


def test_no_module_but_matching_svg_calls_resvg() -> None:
    """Every SVG rendering goes through the bounded renderer: nothing else may import resvg."""
    root = Path(__file__).resolve().parents[2]
    callers = sorted(
        str(path.relative_to(root))
        for package in ("matching", "webapp", "workers", "notices", "crawler", "storage", "config")
        for path in (root / package).rglob("*.py")
        if "resvg_py" in path.read_text(encoding="utf-8")
    )
    assert callers == ["matching/svg.py"]
