"""The plain-language line on the evidence page, from stored signals and the mapped outline."""

from __future__ import annotations

import math

import numpy as np

from webapp.evidence_text import colour_change, geometry, human_number, reason, signal_label, signal_value


def _square(cx: float, cy: float, side: float, degrees: float) -> list[list[float]]:
    """A work's corners (TL, TR, BR, BL) rotated by degrees about (cx, cy), in image coordinates."""
    a = math.radians(degrees)
    out = []
    for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = dx * side / 2, dy * side / 2
        out.append([cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)])
    return out


def test_rotated_logo_with_share_points_and_colour() -> None:
    side = math.sqrt(0.38 * 1000 * 800)
    line = reason(
        {"local": 0.97, "pdq": 0.0, "inliers": 47.0, "tentative": 90.0, "coverage": 0.6},
        _square(500, 400, side, 12),
        (1000, 800),
        kind="logo",
        colour="changed",
    )
    assert line == "The logo appears rotated 12°, about 38% of the upload, 47 matching points, colours changed."


def test_upright_artwork_without_upload_size_gives_points_only() -> None:
    line = reason({"local": 0.9, "inliers": 21.0}, _square(100, 100, 80, 0.5), None)
    assert line == "The artwork matches with 21 matching points."


def test_whole_frame_pdq_copy() -> None:
    line = reason(
        {"local": 0.0, "pdq": 0.99, "pdq_distance": 4.0},
        [[0, 0], [640, 0], [640, 480], [0, 480]],
        (640, 480),
        kind="artwork",
        colour="grey",
    )
    assert line == "The whole upload is a near-identical copy, turned grey."


def test_mirrored_tilted_and_small() -> None:
    region = [[60.0, 10.0], [10.0, 10.0], [5.0, 40.0], [70.0, 40.0]]  # corners reversed: a mirror image
    g = geometry(region, (4000, 3000))
    assert g["mirrored"] is True and g["perspective"] is True
    line = reason({"local": 0.8, "inliers": 1.0}, region, (4000, 3000), kind="logo")
    assert "mirrored" in line and "seen at an angle" in line and "under 1%" in line
    assert "1 matching point," not in line and line.endswith("1 matching point.")


def test_upside_down_and_explained_away() -> None:
    line = reason({"local": 0.7, "inliers": 9.0, "explained_by": 3.0}, _square(50, 50, 40, 180), (100, 100))
    assert "upside down" in line and "16% of the upload" in line and "another of your works" in line


def test_no_geometry_falls_back_to_similarity_or_plain_words() -> None:
    assert reason({"clip": 0.912}, None, None, kind="logo") == (
        "The upload looks like the logo overall (visual similarity 91%)."
    )
    assert "no geometric detail" in reason({}, None, None)


def test_numbers_are_formatted_for_people() -> None:
    assert human_number(21.0) == "21" and human_number(1240) == "1,240" and human_number(0.8123) == "0.81"
    assert signal_value(21.0, "inliers") == "21"
    assert signal_value(0.0, "pdq") == "0%" and signal_value(0.953, "local") == "95%"
    assert signal_label("pdq_distance").startswith("Perceptual-hash distance")


def test_colour_change_sees_a_recoloured_copy_and_a_faithful_one() -> None:
    work = np.zeros((100, 100, 4), np.uint8)
    work[:, :, 0] = 220  # red, opaque
    work[:, :, 3] = 255
    work[30:70, 30:70, :3] = (20, 40, 200)  # a blue square inside
    upload = np.full((300, 300, 3), 255, np.uint8)
    region = [[100.0, 100.0], [200.0, 100.0], [200.0, 200.0], [100.0, 200.0]]
    faithful = upload.copy()
    faithful[100:200, 100:200] = np.asarray(work[:, :, :3])
    assert colour_change(work, faithful, region) == "same"
    recoloured = faithful.copy()
    recoloured[100:200, 100:200] = recoloured[100:200, 100:200][:, :, ::-1]  # swap red and blue
    assert colour_change(work, recoloured, region) == "changed"
    grey = faithful.copy()
    grey[100:200, 100:200] = faithful[100:200, 100:200].mean(axis=2, keepdims=True).astype(np.uint8)
    assert colour_change(work, grey, region) == "grey"
