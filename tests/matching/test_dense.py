"""The dense check of a fitted alignment, and the low-contrast fallback of the detector."""

from __future__ import annotations

import cv2
import numpy as np

from matching.dense import THUMB_SIDE, dense_agreement, work_thumbnails
from matching.local import extract_features
from tests.matching.conftest import smooth_image


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), np.uint8)


def _paste(work: np.ndarray, canvas: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``work`` warped by ``H`` onto ``canvas`` (an opaque copy)."""
    h, w = canvas.shape[:2]
    warped = cv2.warpPerspective(work, H, (w, h))
    inside = cv2.warpPerspective(np.full(work.shape[:2], 255, np.uint8), H, (w, h)) > 0
    out = canvas.copy()
    out[inside] = warped[inside]
    return out


def _logo(colour: tuple[int, int, int], letter: bool) -> tuple[np.ndarray, np.ndarray]:
    """A round transparent logo (on white, on black), with or without a bar inside."""
    rgba = np.zeros((200, 200, 4), np.uint8)
    cv2.circle(rgba, (100, 100), 90, (*colour, 255), -1)
    if letter:
        cv2.rectangle(rgba, (70, 50), (90, 150), (255, 255, 255, 255), -1)
        cv2.rectangle(rgba, (90, 50), (140, 70), (255, 255, 255, 255), -1)
    else:
        cv2.rectangle(rgba, (60, 90), (140, 110), (255, 255, 255, 255), -1)
    a = rgba[:, :, 3:4].astype(np.float32) / 255.0
    fg = rgba[:, :, :3].astype(np.float32)
    on_white = (fg * a + 255.0 * (1 - a)).astype(np.uint8)
    on_black = (fg * a).astype(np.uint8)
    return on_white, on_black


def test_true_alignment_agrees_and_a_wrong_one_does_not() -> None:
    work = smooth_image(3, 320, 240)
    scene = smooth_image(99, 640, 480)
    H = np.array([[0.9, 0.1, 120.0], [-0.1, 0.9, 90.0], [0.0, 0.0, 1.0]])
    upload = _gray(_paste(work, scene, H))
    thumbs = work_thumbnails([work])
    assert thumbs.shape == (1, 96, THUMB_SIDE)
    right = dense_agreement(thumbs, (320, 240), False, H, upload)
    shifted = H @ np.array([[1.0, 0.0, 60.0], [0.0, 1.0, -40.0], [0.0, 0.0, 1.0]])
    wrong = dense_agreement(thumbs, (320, 240), False, shifted, upload)
    other = dense_agreement(work_thumbnails([smooth_image(4, 320, 240)]), (320, 240), False, H, upload)
    assert right is not None and wrong is not None and other is not None
    assert right > 0.8
    assert wrong < 0.5 and other < 0.5


def test_recolouring_does_not_break_agreement() -> None:
    work = smooth_image(5, 320, 240)
    H = np.array([[1.2, 0.0, 30.0], [0.0, 1.2, 20.0], [0.0, 0.0, 1.0]])
    upload = _paste(work, smooth_image(6, 480, 360), H)
    inverted = 255 - upload  # negative image: every edge keeps its place, polarity flips
    score = dense_agreement(work_thumbnails([work]), (320, 240), False, H, _gray(inverted))
    assert score is not None and score > 0.8


def test_mirrored_frame_is_honoured() -> None:
    work = smooth_image(7, 320, 240)
    mirrored = np.ascontiguousarray(work[:, ::-1])
    H = np.array([[1.0, 0.0, 50.0], [0.0, 1.0, 40.0], [0.0, 0.0, 1.0]])
    upload = _gray(_paste(mirrored, smooth_image(8, 480, 360), H))
    thumbs = work_thumbnails([work])
    as_mirrored = dense_agreement(thumbs, (320, 240), True, H, upload)
    as_direct = dense_agreement(thumbs, (320, 240), False, H, upload)
    assert as_mirrored is not None and as_direct is not None
    assert as_mirrored > 0.8 > as_direct


def test_a_shared_outline_is_not_enough_for_a_transparent_logo() -> None:
    """Two round logos share their circle; only the edges inside tell them apart."""
    mine = _logo((40, 90, 200), letter=True)
    theirs = _logo((40, 90, 200), letter=False)
    H = np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 80.0], [0.0, 0.0, 1.0]])
    scene = np.full((400, 400, 3), 230, np.uint8)
    thumbs = work_thumbnails(list(mine))
    copy = dense_agreement(thumbs, (200, 200), False, H, _gray(_paste(mine[0], scene, H)))
    lookalike = dense_agreement(thumbs, (200, 200), False, H, _gray(_paste(theirs[0], scene, H)))
    assert copy is not None and lookalike is not None
    assert copy > 0.8
    assert lookalike < 0.5


def test_too_little_of_the_work_visible_says_nothing() -> None:
    work = smooth_image(9, 320, 240)
    H = np.array([[1.0, 0.0, -300.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # almost all off-frame
    upload = _gray(smooth_image(10, 320, 240))
    assert dense_agreement(work_thumbnails([work]), (320, 240), False, H, upload) is None


def test_faded_image_still_gets_keypoints() -> None:
    """A low-contrast picture is described again with a lower contrast threshold."""
    rgb = smooth_image(11, 400, 300)
    original = len(extract_features(rgb, min_kp=0))
    faded = (128 + (rgb.astype(np.int16) - 128) // 8).astype(np.uint8)
    assert len(extract_features(faded, min_kp=0)) < original // 4  # the usual threshold finds little
    assert len(extract_features(faded)) >= original


def test_calibration_written_before_the_dense_term_still_loads() -> None:
    from matching.engine import ScoreModel

    model = ScoreModel.from_json({"local": [-4.5, 2.6, 2.0, 1.2], "pdq": [7.0, -0.25], "threshold": 0.6}, 0.5)
    assert model.local == (-4.5, 2.6, 2.0, 1.2, 0.0)
    assert model.threshold == 0.6


def test_balanced_upload_keypoints_keep_a_quiet_corner() -> None:
    """A busy photo must not take the whole keypoint budget from a faint logo in its corner."""
    rng = np.random.default_rng(12)
    busy = cv2.resize(rng.integers(0, 256, (60, 80), dtype=np.uint8), (400, 300),
                      interpolation=cv2.INTER_NEAREST)
    rgb = np.repeat(busy[:, :, None], 3, axis=2)
    quiet = smooth_image(13, 100, 75)
    rgb[225:, 300:] = (128 + (quiet.astype(np.int16) - 128) // 3).astype(np.uint8)

    def in_corner(f: object) -> int:
        xy = f.xy  # type: ignore[attr-defined]
        return int(((xy[:, 0] > 304) & (xy[:, 1] > 229)).sum())

    plain = extract_features(rgb, max_kp=400)
    balanced = extract_features(rgb, max_kp=400, balanced=True)
    assert len(balanced) <= 400
    assert in_corner(balanced) >= 5
    assert in_corner(balanced) > 2 * in_corner(plain)


def test_compiled_posting_scan_equals_the_numpy_reference() -> None:
    from matching._scan import hamming_hits

    rng = np.random.default_rng(14)
    n_words, n_postings = 300, 20_000
    word_of = np.sort(rng.integers(0, n_words, n_postings))
    offsets = np.searchsorted(word_of, np.arange(n_words + 1)).astype(np.int64)
    sig = rng.integers(0, 2**63, n_postings, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    near = rng.integers(0, n_postings, 250)  # queries 3 bits from a posting of their own word
    words = np.concatenate([word_of[near], rng.integers(0, n_words, 250)]).astype(np.int32)
    qsig = np.concatenate([sig[near] ^ np.uint64(0b1011),
                           rng.integers(0, 2**63, 250, dtype=np.int64).astype(np.uint64)])
    image = (np.arange(n_postings) % 7).astype(np.int32)
    alive = np.array([True] * 6 + [False])
    got = hamming_hits(offsets, sig, words, qsig, 22, image, alive)
    start = offsets[words]
    cnt = offsets[words + 1] - start
    rep = np.repeat(np.arange(words.shape[0]), cnt)
    pos = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(start, cnt)
    ham = np.bitwise_count(sig[pos] ^ qsig[rep])
    ok = (ham <= 22) & alive[image[pos]]
    want = set(zip(rep[ok].tolist(), pos[ok].tolist(), ham[ok].tolist(), image[pos[ok]].tolist(), strict=True))
    assert want and set(zip(*(a.tolist() for a in got), strict=True)) == want
    assert int((got[2] == 3).sum()) >= 200 and not (got[3] == 6).any()
    # Every posting a hit: more than the first output space holds, so it retries.
    everything = hamming_hits(offsets, sig, words, qsig, 64, image, alive)
    assert everything[0].shape[0] == int(alive[image[pos]].sum()) > 8 * 1024
    empty = hamming_hits(offsets, sig, words[:0], qsig[:0], 22, image, alive)
    assert all(a.shape == (0,) for a in empty)


def test_distinct_best_keeps_the_closest_unambiguous_posting() -> None:
    from matching._scan import distinct_best

    xy = np.array([[0, 0], [2, 1], [50, 50], [10, 10], [0, 0], [80, 0]], np.float32)
    # query 0: image 7 has postings 0 (h 5) and 1 (h 6, same place) -> distinct (no far one);
    #          image 8 has postings 2 (h 4) and 3 (h 5, far) -> ambiguous (margin 1 < 3).
    # query 1: image 7 has postings 4 (h 9) and 5 (h 20, far) -> distinct.
    qrow = np.array([0, 0, 0, 0, 1, 1], np.int32)
    image = np.array([7, 7, 8, 8, 7, 7], np.int32)
    ham = np.array([5, 6, 4, 5, 9, 20], np.uint8)
    pos = np.arange(6, dtype=np.int64)
    sel = distinct_best(qrow, image, ham, pos, xy, 6.0, 3)
    assert sorted(sel.tolist()) == [0, 4]
