"""Geometric verification: the fitted alignment, its evidence, and the alternative a homography leaves."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from matching.verify import verify


def _copy(seed: int, n_in: int, n_out: int, *, scale: float = 0.6, angle: float = 25.0,
          shift: tuple[float, float] = (60.0, 40.0), noise: float = 0.5,
          ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``n_in`` correspondences under one similarity (with pixel noise) among ``n_out`` random ones."""
    r = np.random.default_rng(seed)
    w = r.uniform(0, 400, (n_in + n_out, 2))
    t = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    q = w @ rot.T + np.asarray(shift)
    q[:n_in] += r.normal(0, noise, (n_in, 2))
    q[n_in:] = r.uniform(0, 320, (n_out, 2))
    order = r.permutation(n_in + n_out)
    return w[order].astype(np.float32), q[order].astype(np.float32)


def test_verify_reports_the_copy_and_its_outline() -> None:
    w, q = _copy(4, 12, 30, scale=0.5, angle=0.0, shift=(20.0, 30.0))
    v = verify(w, q, work_size=(400, 400), upload_size=(320, 320))
    assert v is not None
    assert 10 <= v.inliers <= 12  # distinct positions: two of the 12 may share a cell
    assert v.tentative == 42
    assert v.plausible
    assert np.isclose(v.scale, 0.5, rtol=0.05)  # read from the refined homography
    np.testing.assert_allclose(v.polygon, [[20, 30], [220, 30], [220, 230], [20, 230]], atol=6.0)


def test_random_correspondences_verify_little() -> None:
    r = np.random.default_rng(5)
    w = r.uniform(0, 400, (40, 2)).astype(np.float32)
    q = r.uniform(0, 320, (40, 2)).astype(np.float32)
    v = verify(w, q, work_size=(400, 400), upload_size=(320, 320))
    assert v is None or v.inliers <= 4


def test_a_homography_keeps_the_similarity_it_refined_as_the_alternative() -> None:
    r = np.random.default_rng(6)
    w = r.uniform(0, 400, (40, 2)).astype(np.float32)
    src = np.array([[0, 0], [400, 0], [400, 400], [0, 400]], np.float32)
    dst = np.array([[30, 20], [300, 0], [290, 300], [0, 280]], np.float32)
    H = cv2.getPerspectiveTransform(src, dst)
    q = cv2.perspectiveTransform(w.reshape(-1, 1, 2), H).reshape(-1, 2).astype(np.float32)
    v = verify(w, q, work_size=(400, 400), upload_size=(320, 320))
    assert v is not None and v.homography is not None
    assert not np.allclose(v.homography[2], [0, 0, 1])  # refined to a homography
    np.testing.assert_allclose(v.polygon, dst, atol=1.0)
    alt = v.alternative
    assert alt is not None and alt.alternative is None
    assert alt.homography is not None and np.allclose(alt.homography[2], [0, 0, 1])
    assert np.isclose(alt.distortion, 1.0)
    assert alt.inliers < v.inliers  # the similarity explains only part of a tilted copy
