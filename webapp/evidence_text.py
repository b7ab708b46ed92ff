"""Plain-language evidence: one line a person reads before the raw signals.

The line is built only from what a match stores (its signals and the work's
outline mapped into the upload, ``Match.region``) plus, when the page can
afford it, a colour comparison of the aligned pixels. Every phrase states a
measured fact ("47 matching points"), never a judgement the numbers cannot
carry; a number the match does not have is left out rather than guessed.

``reason(...)`` is the phrasing function (pure, tested on several signal
sets); ``colour_change(...)`` measures the colour difference between the
work and the region of the upload its outline covers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["colour_change", "geometry", "human_number", "reason", "signal_label", "signal_value"]

#: Below this the rotation is noise from the fit, not an edit.
MIN_ROTATION_DEG = 3.0
#: Opposite edges differing by more than this mean a tilted (perspective) copy.
PERSPECTIVE_RATIO = 1.15
#: Mean chroma difference (OpenCV Lab a/b units, 0-255) above which colours changed.
COLOUR_CHANGED = 18.0
#: Chroma below this is grey.
GREY_CHROMA = 6.0


def human_number(value: Any) -> str:
    """A number as a person writes it: 21.0 -> "21", 1240 -> "1,240", 0.8123 -> "0.81"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    v = float(value)
    if not math.isfinite(v):
        return "—"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _signed_area(poly: Sequence[Sequence[float]]) -> float:
    n = len(poly)
    return 0.5 * sum(
        float(poly[i][0]) * float(poly[(i + 1) % n][1]) - float(poly[(i + 1) % n][0]) * float(poly[i][1])
        for i in range(n)
    )


def geometry(
    region: Sequence[Sequence[float]] | None, upload_size: tuple[int, int] | None
) -> dict[str, float | bool]:
    """What the work's outline in the upload says: rotation, share of the upload, tilt, mirroring.

    ``region`` is the work's corners (top-left, top-right, bottom-right,
    bottom-left) in upload pixels, as :mod:`matching.verify` maps them.
    """
    out: dict[str, float | bool] = {}
    if not region or len(region) != 4:
        return out
    try:
        pts = [(float(x), float(y)) for x, y in region]
    except (TypeError, ValueError):
        return out
    (x0, y0), (x1, y1) = pts[0], pts[1]
    angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
    out["rotation"] = (angle + 180.0) % 360.0 - 180.0
    area = _signed_area(pts)
    out["mirrored"] = area < 0
    edges = [math.dist(pts[i], pts[(i + 1) % 4]) for i in range(4)]
    ratios = [
        max(a, b) / max(min(a, b), 1e-9) for a, b in ((edges[0], edges[2]), (edges[1], edges[3]))
    ]
    out["perspective"] = max(ratios) > PERSPECTIVE_RATIO
    if upload_size and upload_size[0] > 0 and upload_size[1] > 0:
        out["share"] = min(1.0, abs(area) / float(upload_size[0] * upload_size[1]))
    return out


def reason(
    signals: Mapping[str, Any] | None,
    region: Sequence[Sequence[float]] | None,
    upload_size: tuple[int, int] | None,
    *,
    kind: str = "artwork",
    colour: str | None = None,
) -> str:
    """One sentence on why this upload matched, e.g.
    "The logo appears rotated 12°, about 38% of the upload, 47 matching points, colours changed."

    ``colour`` is "changed", "grey" or "same" from :func:`colour_change`
    (None when it was not measured).
    """
    sig = dict(signals or {})
    noun = "logo" if kind == "logo" else "artwork"
    geo = geometry(region, upload_size)
    parts: list[str] = []

    pdq_d = sig.get("pdq_distance")
    local = float(sig.get("local") or 0.0)
    pdq = float(sig.get("pdq") or 0.0)
    whole_frame = pdq_d is not None and pdq > local
    if pdq_d is not None and whole_frame:
        d = int(float(pdq_d))
        parts.append("the whole upload is a near-identical copy" if d <= 10 else "the whole upload is a close copy")
    rot = float(geo.get("rotation", 0.0))
    if abs(rot) >= MIN_ROTATION_DEG and not whole_frame:
        turn = round(abs(rot))
        if turn == 180:
            parts.append("upside down")
        else:
            parts.append(f"rotated {turn}°")
    if geo.get("mirrored"):
        parts.append("mirrored")
    if geo.get("perspective") and not whole_frame:
        parts.append("seen at an angle")
    share = geo.get("share")
    if share is not None and not whole_frame:
        pct = float(share) * 100.0
        if pct >= 95:
            parts.append("filling the whole upload")
        elif pct >= 1:
            parts.append(f"about {pct:.0f}% of the upload")
        else:
            parts.append("a small part of the upload (under 1%)")
    shaped = len(parts)  # phrases about where and how the work appears
    inliers = sig.get("inliers")
    if inliers is not None and float(inliers) > 0:
        n = round(float(inliers))
        parts.append(f"{n:,} matching point{'s' if n != 1 else ''}")
    if colour == "changed":
        parts.append("colours changed")
    elif colour == "grey":
        parts.append("turned grey")
    if "explained_by" in sig:
        parts.append("weaker than a match with another of your works on the same spot")
    if not parts:
        clip = sig.get("clip")
        if clip is not None:
            return f"The upload looks like the {noun} overall (visual similarity {float(clip) * 100:.0f}%)."
        return f"The upload resembles the {noun}; no geometric detail was stored for this match."
    if whole_frame:
        sentence = parts[0][0].upper() + parts[0][1:] + "".join(", " + p for p in parts[1:])
    elif shaped:
        sentence = f"The {noun} appears " + ", ".join(parts)
    else:
        sentence = f"The {noun} matches with " + ", ".join(parts)
    return sentence + "."


def colour_change(
    work_rgba: Any, upload_rgb: Any, region: Sequence[Sequence[float]]
) -> str | None:
    """Compare the work's colours with the upload's pixels under its outline.

    Both are numpy arrays (H x W x 4 RGBA for the work, H x W x 3 RGB for the
    upload, full resolution; ``region`` in upload pixels). The upload is warped
    into a small copy of the work's frame, and the Lab chroma of the two is
    compared where the work is opaque. Returns "changed", "grey", "same", or
    None when there is too little to compare.
    """
    import cv2
    import numpy as np

    if not region or len(region) != 4:
        return None
    wh, ww = work_rgba.shape[:2]
    side = 64
    tw, th = (side, max(1, round(side * wh / ww))) if ww >= wh else (max(1, round(side * ww / wh)), side)
    work_small = cv2.resize(work_rgba, (tw, th), interpolation=cv2.INTER_AREA)
    dst = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float32)
    src = np.array(region, np.float32)
    try:
        m = cv2.getPerspectiveTransform(src, dst)
    except cv2.error:
        return None
    warped = cv2.warpPerspective(upload_rgb, m, (tw, th), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))
    covered = cv2.warpPerspective(
        np.full(upload_rgb.shape[:2], 255, np.uint8), m, (tw, th), flags=cv2.INTER_NEAREST, borderValue=0
    )
    mask = (work_small[:, :, 3] > 200) & (covered > 0)
    if int(mask.sum()) < 30:
        return None
    lab_w = cv2.cvtColor(np.ascontiguousarray(work_small[:, :, :3]), cv2.COLOR_RGB2LAB).astype(np.float32)
    lab_u = cv2.cvtColor(np.ascontiguousarray(warped), cv2.COLOR_RGB2LAB).astype(np.float32)
    cw = lab_w[:, :, 1:][mask] - 128.0
    cu = lab_u[:, :, 1:][mask] - 128.0
    chroma_w = float(np.linalg.norm(cw, axis=1).mean())
    chroma_u = float(np.linalg.norm(cu, axis=1).mean())
    if chroma_w > 3 * GREY_CHROMA and chroma_u < GREY_CHROMA:
        return "grey"
    diff = float(np.linalg.norm(cw - cu, axis=1).mean())
    return "changed" if diff > COLOUR_CHANGED else "same"


_LABELS = {
    "local": "Local-feature evidence (probability)",
    "pdq": "Perceptual-hash evidence (probability)",
    "clip": "Visual similarity (CLIP cosine)",
    "inliers": "Matching points (verified)",
    "tentative": "Candidate point pairs",
    "coverage": "Share of the work the points cover",
    "dense": "Edge agreement after alignment",
    "pdq_distance": "Perceptual-hash distance (bits of 256)",
    "explained_by": "Explained by a stronger match with work",
}
_PERCENT = {"local", "pdq", "coverage"}


def signal_label(name: str) -> str:
    """A stored signal's name as a person reads it."""
    return _LABELS.get(name, name.replace("_", " "))


def signal_value(value: Any, name: str = "") -> str:
    """A stored signal's value formatted for people: percentages, whole counts, two decimals."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if name in _PERCENT:
            return f"{float(value) * 100:.0f}%"
        if name == "explained_by":
            return f"#{int(value)}"
        return human_number(value)
    return str(value)
