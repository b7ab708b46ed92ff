"""The one way artwatch turns an SVG into pixels: sanitise, then render in a bounded child process.

Every SVG the project rasterises (the decoder that matching, the workers, the
CLI and ``scan`` use, and the web app's thumbnails and sizes) goes through
:func:`render_svg`. An SVG is a program for resvg, and a hostile one can ask
for unbounded work: ``feTurbulence numOctaves="100"`` renders for tens of
seconds, ``<use>`` elements that each reference a group of several ``<use>``
grow exponentially, and 100,000 nested ``<g>`` overflow recursive parsers.
No pre-pass can price every construct, so the bound is a process:

1. **Sanitise** (in process, linear time): the size is capped
   (:data:`SVG_MAX_BYTES`); a DOCTYPE internal subset or any entity is
   refused and parsing goes through defusedxml; nesting deeper than
   :data:`MAX_DEPTH` is refused (checked without recursion); scripts and
   foreign objects are dropped; every reference that is not a fragment
   (``#id``) or an inline raster ``data:`` URI is removed, from attributes and
   CSS alike, so rendering reads no file and no network; more than
   :data:`MAX_FILTER_PRIMITIVES` filter primitives are refused, and
   ``feTurbulence`` octaves are clamped to :data:`MAX_OCTAVES` (octave *k*
   adds noise of amplitude 2^-k, so octaves past ten change no 8-bit pixel).
   The pre-pass keeps the common hostile cases cheap and clearly reported.
2. **Render** in a fresh ``python -I -S`` child that sets its own
   ``RLIMIT_CPU`` (:attr:`RenderLimits.cpu_seconds`) and ``RLIMIT_AS``
   (:attr:`RenderLimits.memory_bytes`) before it imports resvg, with an empty
   environment (no ``LD_PRELOAD``: jemalloc's reservations would trip the
   address-space limit) and a wall-clock deadline enforced by the parent
   (:attr:`RenderLimits.wall_seconds`, for a child that stalls without using
   CPU). Whatever the SVG does, it costs at most that CPU and memory, and a
   crash of the native renderer (a stack overflow, an abort) kills only the
   child. The output size is priced before rendering: an intrinsic size over
   ``max_pixels`` is refused.

The child costs a process start (``-I -S`` keeps Python's start-up near
15 ms: no site packages are scanned, only resvg's folder is put on the path)
plus the PNG's trip through a pipe. For a normal logo decoded at 1024 px that
measured 1.0x to 1.35x the in-process time (median of three rounds 1.17x, on
a loaded two-core machine; see issue 16's note). Failures raise
:class:`~matching.errors.ImageError` subclasses that name the file:
:class:`~matching.errors.DecodeError` (malformed, or resvg refuses it),
:class:`~matching.errors.UnsupportedFormat` (XML that is not SVG),
:class:`~matching.errors.ImageTooLarge` (bytes or pixels over the cap) and
:class:`~matching.errors.ImageTooComplex` (over the nesting, filter, CPU,
memory or time budget).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from matching.errors import DecodeError, ImageTooComplex, ImageTooLarge, UnsupportedFormat

__all__ = [
    "MAX_DEPTH",
    "MAX_FILTER_PRIMITIVES",
    "MAX_OCTAVES",
    "SVG_MAX_BYTES",
    "RenderLimits",
    "SanitisedSvg",
    "looks_like_svg",
    "render_svg",
    "sanitise_svg",
]

SVG_MAX_BYTES = 5_000_000
#: Deepest element nesting accepted. Real drawings (Inkscape, Illustrator exports) stay under 50;
#: resvg overflows its stack near 250 nested groups (the child dies, but the message is vaguer).
MAX_DEPTH = 128
#: Filter primitives (``fe*`` elements) accepted in one document.
MAX_FILTER_PRIMITIVES = 64
#: ``feTurbulence numOctaves`` is clamped to this; later octaves are below one 8-bit step.
MAX_OCTAVES = 10
#: Pixels of the rendered canvas when the caller gives no cap.
DEFAULT_MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class RenderLimits:
    """The budget of one render. ``cpu_seconds`` is whole seconds (RLIMIT_CPU's unit)."""

    cpu_seconds: int = 2
    memory_bytes: int = 1 << 30
    wall_seconds: float = 20.0


@dataclass(frozen=True)
class SanitisedSvg:
    """Safe SVG text, and its intrinsic size in px when the root declares one."""

    text: str
    width: float | None
    height: float | None


_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"
_DOCTYPE_RE = re.compile(rb"<!DOCTYPE[^\[>]*>", re.IGNORECASE)
_SAFE_DATA_URI = re.compile(r"^\s*data:image/(png|jpeg|jpg|gif|webp);", re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(?!#)[^)]*\)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import[^;]*;?", re.IGNORECASE)
_DROP_TAGS = {"script", "foreignObject", "iframe", "audio", "video"}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px)?\s*$")


def looks_like_svg(data: bytes) -> bool:
    """True when the bytes start like XML and mention ``<svg`` early: route them here, not to Pillow."""
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"<"):
        return False
    return b"<svg" in data[:65536].lower()


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _check_depth(root: Any, label: str) -> None:
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ImageTooComplex(label, f"SVG nests elements deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in el)


def sanitise_svg(data: bytes, name: str = "") -> SanitisedSvg:
    """Safe SVG text for resvg; see the module docstring for what is refused, removed or clamped."""
    label = name or "<bytes>"
    if len(data) > SVG_MAX_BYTES:
        raise ImageTooLarge(label, f"SVG of {len(data)} bytes is over the limit of {SVG_MAX_BYTES}")
    if re.search(rb"<!DOCTYPE[^>]*\[", data, re.IGNORECASE) or b"<!ENTITY" in data.upper():
        raise DecodeError(label, "SVG with a DOCTYPE internal subset or entities refused")
    data = _DOCTYPE_RE.sub(b"", data, count=1)
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise DecodeError(label, f"unsafe SVG refused ({type(exc).__name__})") from None
    except SafeET.ParseError as exc:
        raise DecodeError(label, f"malformed SVG: {exc}") from None
    if _local(root.tag) != "svg":
        raise UnsupportedFormat(label, "XML document is not an SVG")
    _check_depth(root, label)
    for parent in list(root.iter()):
        for child in list(parent):
            if _local(child.tag) in _DROP_TAGS or not isinstance(child.tag, str):
                parent.remove(child)
    primitives = 0
    for el in root.iter():
        tag = _local(el.tag)
        if tag.startswith("fe") and not tag.startswith("feFunc") and not tag.endswith("Light"):
            primitives += 1
            if primitives > MAX_FILTER_PRIMITIVES:
                raise ImageTooComplex(label, f"SVG has more than {MAX_FILTER_PRIMITIVES} filter primitives")
        if tag == "feTurbulence":
            _clamp_octaves(el)
        for key in list(el.attrib):
            local = _local(key)
            value = el.attrib[key]
            if local == "href":
                if not (value.startswith("#") or _SAFE_DATA_URI.match(value)):
                    del el.attrib[key]
            elif local.startswith("on"):
                del el.attrib[key]
            elif local == "style" or "url(" in value:
                el.attrib[key] = _CSS_URL.sub("none", _CSS_IMPORT.sub("", value))
        if tag == "style" and el.text:
            el.text = _CSS_URL.sub("none", _CSS_IMPORT.sub("", el.text))
    width, height = _intrinsic_size(root)
    from xml.etree import ElementTree as ET  # serialising only; parsing was defused

    ET.register_namespace("", _SVG_NS)
    ET.register_namespace("xlink", _XLINK_NS)
    return SanitisedSvg(ET.tostring(root, encoding="unicode"), width, height)


def _clamp_octaves(el: Any) -> None:
    raw = el.attrib.get("numOctaves")
    if raw is None:
        return
    try:
        octaves = float(raw)
    except ValueError:
        return  # resvg ignores a malformed value and uses the default (1)
    if octaves > MAX_OCTAVES:
        el.attrib["numOctaves"] = str(MAX_OCTAVES)


def _intrinsic_size(root: Any) -> tuple[float | None, float | None]:
    width = _length(root.attrib.get("width"))
    height = _length(root.attrib.get("height"))
    if width is None or height is None:
        vb = root.attrib.get("viewBox", "").replace(",", " ").split()
        if len(vb) == 4:
            try:
                vw, vh = float(vb[2]), float(vb[3])
            except ValueError:
                vw = vh = 0.0
            if vw > 0 and vh > 0:
                if width is None and height is None:
                    width, height = vw, vh
                elif width is None and height is not None:
                    width = height * vw / vh
                elif height is None and width is not None:
                    height = width * vh / vw
    return width, height


def _length(value: str | None) -> float | None:
    if not value:
        return None
    m = _NUM.match(value)
    if not m:
        return None
    v = float(m.group(1))
    return v if v > 0 else None


def render_svg(
    data: bytes,
    *,
    name: str = "",
    side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limits: RenderLimits | None = None,
) -> bytes:
    """The SVG rendered to PNG bytes, sanitised first and within ``limits``.

    With ``side`` and a known intrinsic size, the long side is rendered at
    ``side`` pixels; otherwise resvg's own size (the intrinsic size, or its
    default) is used. A planned canvas over ``max_pixels`` raises
    :class:`ImageTooLarge` before anything is rendered.
    """
    label = name or "<bytes>"
    svg = sanitise_svg(data, label)
    w, h = svg.width, svg.height
    kwargs: dict[str, Any] = {}
    if w and h:
        if side is not None:
            if w >= h:
                kwargs["width"] = side
                w, h = side, side * h / w
            else:
                kwargs["height"] = side
                w, h = side * w / h, side
        if w * h > max_pixels:
            raise ImageTooLarge(label, f"SVG would render to {w:.0f}x{h:.0f} pixels (limit {max_pixels})")
    return _render_in_child(svg.text, kwargs, label, limits or RenderLimits())


@lru_cache(maxsize=1)
def _resvg_path() -> str:
    """The folder that holds the ``resvg_py`` package, found without loading it here."""
    spec = importlib.util.find_spec("resvg_py")
    if spec is None or spec.origin is None:  # pragma: no cover - a declared dependency
        raise RuntimeError("resvg_py is not installed")
    return os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))


# The child: limits first, then resvg. Exit 3 is resvg refusing the document.
_CHILD = """
import json, resource, sys
cpu, mem, path, kwargs = json.loads(sys.argv[1])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
sys.path.insert(0, path)
import resvg_py
svg = sys.stdin.buffer.read().decode("utf-8")
try:
    png = resvg_py.svg_to_bytes(svg_string=svg, **kwargs)
except (ValueError, RuntimeError, OSError) as exc:
    sys.stderr.write(str(exc)[:300])
    sys.exit(3)
except MemoryError:
    sys.exit(4)
sys.stdout.buffer.write(png)
"""


def _render_in_child(text: str, kwargs: dict[str, Any], label: str, limits: RenderLimits) -> bytes:
    args = json.dumps([limits.cpu_seconds, limits.memory_bytes, _resvg_path(), kwargs])
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CHILD, args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            cwd="/",
        )
    except OSError as exc:
        raise DecodeError(label, f"the SVG renderer cannot start ({exc.strerror})") from None
    try:
        out, err = proc.communicate(text.encode("utf-8"), timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ImageTooComplex(label, f"SVG took longer than {limits.wall_seconds:g} s to render") from None
    code = proc.returncode
    if code == 0 and out:
        return out
    if code == 3:
        first = err.decode("utf-8", "replace").strip().splitlines()
        raise DecodeError(label, f"SVG cannot be rendered ({first[0][:200] if first else 'resvg refused it'})")
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        raise ImageTooComplex(label, f"SVG needs more than {limits.cpu_seconds} s of CPU to render")
    if code == 4 or code in (-signal.SIGABRT, -signal.SIGSEGV, -signal.SIGBUS):
        raise ImageTooComplex(
            label,
            f"SVG rendering ran out of memory ({limits.memory_bytes >> 20} MiB) or stack (exit {code})",
        )
    raise DecodeError(label, f"the SVG renderer failed (exit {code})")
