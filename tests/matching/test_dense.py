"""The dense check of a fitted alignment, and the low-contrast fallback of the detector."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from matching.dense import THUMB_SIDE, dense_agreement, work_thumbnails
from matching.features import extract_features
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


def _plain_disc() -> tuple[np.ndarray, np.ndarray]:
    """A transparent logo that is a flat disc and a bar (nothing inside the outline), on white and on black."""
    rgba = np.zeros((200, 200, 4), np.uint8)
    cv2.circle(rgba, (110, 100), 85, (220, 60, 60, 255), -1)
    cv2.rectangle(rgba, (5, 15), (30, 185), (220, 60, 60, 255), -1)
    a = rgba[:, :, 3:4].astype(np.float32) / 255.0
    fg = rgba[:, :, :3].astype(np.float32)
    return (fg * a + 255.0 * (1 - a)).astype(np.uint8), (fg * a).astype(np.uint8)


def test_a_flat_inside_logo_needs_a_flat_inside_in_the_upload() -> None:
    """A plain disc logo: another round logo with a mark inside fills the same outline."""
    mine = _plain_disc()
    H = np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 80.0], [0.0, 0.0, 1.0]])
    scene = np.full((400, 400, 3), 230, np.uint8)
    other = mine[0].copy()  # same outline, a white mark inside the disc
    cv2.rectangle(other, (80, 50), (100, 150), (255, 255, 255), -1)
    cv2.rectangle(other, (100, 130), (150, 150), (255, 255, 255), -1)
    cv2.circle(other, (125, 80), 18, (255, 255, 255), 6)
    thumbs = work_thumbnails(list(mine))
    copy = dense_agreement(thumbs, (200, 200), False, H, _gray(_paste(mine[0], scene, H)))
    lookalike = dense_agreement(thumbs, (200, 200), False, H, _gray(_paste(other, scene, H)))
    assert copy is not None and lookalike is not None
    assert copy > 0.8
    assert lookalike < copy - 0.25


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
    rgb = np.asarray(np.repeat(busy[:, :, None], 3, axis=2), dtype=np.uint8)
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


@pytest.mark.parametrize("budget", [400, 5000])  # more keypoints than the budget, and fewer
def test_one_sift_pass_and_two_give_the_same_upload_features(
    budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quiet uploads are described in one SIFT pass, busy ones detect first and describe
    the balanced selection: the keypoints and descriptors must not depend on the path."""
    from matching import features as local
    from matching.features import _busy_share

    rgb = smooth_image(21, 480, 360)
    rgb[100:260, 120:360] = cv2.resize(np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8),
                                       (240, 160), interpolation=cv2.INTER_NEAREST)
    gray = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
    assert 0.0 < _busy_share(gray) < 1.0
    out = []
    for share in (0.0, 2.0):  # always two passes, always one
        monkeypatch.setattr(local, "ONE_PASS_BUSY", share)
        out.append(extract_features(rgb, max_kp=budget, balanced=True))
    two, one = out
    assert 100 < len(two) <= budget
    assert (len(two) == budget) == (budget == 400)
    for field in ("xy", "scale", "angle", "desc"):
        assert np.array_equal(getattr(two, field), getattr(one, field)), field


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
    # A segment keeps a word's postings by ascending image, and of each image the low
    # 16 bits, the high bits as runs: 200,000 images make four runs a word.
    n_images = 200_000
    image = np.concatenate([np.sort(rng.integers(0, n_images, int(offsets[w + 1] - offsets[w])))
                            for w in range(n_words)]).astype(np.int32)
    alive = rng.random(n_images) > 0.15
    runs = np.searchsorted(word_of.astype(np.int64) * 4 + (image >> 16), np.arange(n_words * 4 + 1)).astype(np.int64)
    image_lo = (image & 0xFFFF).astype(np.uint16)

    def scan(words: np.ndarray, qsig: np.ndarray, rows: np.ndarray, radius: int, per_row: int) -> tuple[
            np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return hamming_hits(offsets, runs, sig, words, qsig, rows, radius, per_row, image_lo, alive)

    rows = np.arange(words.shape[0], dtype=np.int32) // 2  # two words per query keypoint
    got = scan(words, qsig, rows, 22, 0)
    start = offsets[words]
    cnt = offsets[words + 1] - start
    rep = np.repeat(np.arange(words.shape[0]), cnt)
    pos = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(start, cnt)
    ham = np.bitwise_count(sig[pos] ^ qsig[rep])
    ok = (ham <= 22) & alive[image[pos]]
    want = set(zip(rep[ok].tolist(), pos[ok].tolist(), ham[ok].tolist(), image[pos[ok]].tolist(), strict=True))
    assert want and set(zip(*(a.tolist() for a in got), strict=True)) == want
    assert int((got[2] == 3).sum()) >= 200 and alive[got[3]].all() and (got[3] >= 3 << 16).any()
    # Every posting a hit: more than the first output space holds, so it retries.
    everything = scan(words, qsig, rows, 64, 0)
    assert everything[0].shape[0] == int(alive[image[pos]].sum()) > 8 * 1024
    empty = scan(words[:0], qsig[:0], rows[:0], 22, 0)
    assert all(a.shape == (0,) for a in empty)
    # At most about 12 hits per keypoint: each keypoint's closest, cut at a distance
    # (all hits as close as the farthest kept one stay), the rest of the row dropped.
    for radius in (22, 64):  # 64: the first output space overflows before the cuts
        cut = scan(words, qsig, rows, radius, 12)
        full = scan(words, qsig, rows, radius, 0)
        for r in range(0, 250, 7):
            mine = np.isin(full[0], np.flatnonzero(rows == r))
            kept = np.isin(cut[0], np.flatnonzero(rows == r))
            h_all = np.sort(full[2][mine])
            if h_all.shape[0] <= 12:
                assert sorted(cut[1][kept].tolist()) == sorted(full[1][mine].tolist())
                continue
            limit = h_all[11]
            assert int(cut[2][kept].max()) == limit
            assert kept.sum() == int((h_all <= limit).sum()) >= 12
            assert set(cut[1][kept].tolist()) == set(full[1][mine][full[2][mine] <= limit].tolist())


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
    # The postings' fixed-point positions (uint16 of 1/32 px) select the same hits; 6 px is 192 units,
    # so a posting 6.03 px away is another place and one 5.97 px away is not.
    fixed = (xy * 32).astype(np.uint16)
    assert sorted(distinct_best(qrow, image, ham, pos, fixed, 6.0, 3, unit=1 / 32).tolist()) == [0, 4]
    near = fixed.copy()
    near[3] = fixed[2] + 193  # image 8's second posting 6.03 px from its best one: ambiguous, dropped
    assert 2 not in distinct_best(qrow, image, ham, pos, near, 6.0, 3, unit=1 / 32).tolist()
    near[3] = fixed[2] + 191  # 5.97 px: the same place, so image 8's best posting is distinctive
    assert 2 in distinct_best(qrow, image, ham, pos, near, 6.0, 3, unit=1 / 32).tolist()


def _centroid_case(seed: int, cells: int, per_cell: int, n_x: int, n_pairs: int, *, normal: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centroids per cell, their squared norms, descriptors, and (row, cell) pairs sorted by cell."""
    rng = np.random.default_rng(seed)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.normal(0, 50, shape) if normal else rng.integers(0, 200, shape)).astype(np.float32)

    cent = draw((cells, per_cell, 128))
    x = draw((n_x, 128))
    x_row = rng.integers(0, n_x, n_pairs).astype(np.int64)
    cell = np.sort(rng.integers(0, cells, n_pairs)).astype(np.int64)
    return cent, (cent * cent).sum(2).astype(np.float32), x, x_row, cell


def _brute_nearest(x: np.ndarray, x_row: np.ndarray, cell: np.ndarray, cent: np.ndarray, k: int) -> np.ndarray:
    d = ((x[x_row][:, None, :].astype(np.float64) - cent[cell]) ** 2).sum(2)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_compiled_nearest_centroids_equal_the_numpy_reference() -> None:
    from matching._scan import nearest

    cent, cnorm, x, x_row, cell = _centroid_case(3, 5, 40, 60, 90, normal=False)
    got = nearest(x, x_row, cell, cent, cnorm, 3)
    assert np.array_equal(got, _brute_nearest(x, x_row, cell, cent, 3))
    # ties go to the lower index
    twin = np.repeat(cent[:, :1], 2, axis=1)
    tie = nearest(cent[0, :1].copy(), np.zeros(1, np.int64), np.zeros(1, np.int64), twin,
                  (twin * twin).sum(2).astype(np.float32), 2)
    assert tie.tolist() == [[0, 1]]


def test_nearest_by_cell_agrees_with_brute_force() -> None:
    from matching._scan import nearest_by_cell

    cent, cnorm, x, x_row, cell = _centroid_case(4, 6, 30, 80, 150, normal=True)
    cell[:40] = 2  # a long run of one cell, then short ones
    cell = np.sort(cell)
    got = nearest_by_cell(x, x_row, cell, np.ascontiguousarray(cent.transpose(0, 2, 1)), cnorm, 3)
    assert np.array_equal(got, _brute_nearest(x, x_row, cell, cent, 3))
    assert nearest_by_cell(x, x_row[:0], cell[:0], np.ascontiguousarray(cent.transpose(0, 2, 1)),
                           cnorm, 3).shape == (0, 3)


def test_vocabulary_assignment_matches_brute_force() -> None:
    from matching.vocabulary import HE_BITS, Vocabulary

    rng = np.random.default_rng(5)
    desc = rng.integers(0, 120, (3000, 128)).astype(np.uint8)
    voc = Vocabulary.train(desc, seed=1)
    q = desc[:200]
    rows, sigs, words = voc.assign(q, n_coarse=2, n_fine=2)
    assert rows.shape == sigs.shape == words.shape == (800,)
    x = q.astype(np.float32)
    dc = ((x[:, None, :] - voc.coarse[None]) ** 2).sum(2)
    for r in range(0, 200, 37):
        cells = np.argsort(dc[r])[:2]
        want = []
        for c in sorted(cells):
            df = ((x[r][None] - voc.fine[c]) ** 2).sum(1)
            want += [int(c) * voc.k2 + int(f) for f in np.argsort(df)[:2]]
        assert sorted(words[rows == r].tolist()) == sorted(want)
        # the signature is the sign of the projected residual
        for w, s in zip(words[rows == r], sigs[rows == r], strict=True):
            res = x[r] - voc.fine[w // voc.k2, w % voc.k2]
            bits = (voc.proj @ res > 0).astype(np.uint64)
            assert int(s) == int((bits << np.arange(HE_BITS, dtype=np.uint64)).sum())


def _lloyd_reference(x: np.ndarray, k: int, iters: int) -> np.ndarray:
    m = x.shape[0]
    cent = x[[(j * m) // k for j in range(k)]].astype(np.float64)
    lab = np.full(m, -1)
    for _ in range(iters):
        new = ((x[:, None, :] - cent[None]) ** 2).sum(2).argmin(1)
        if (new == lab).all():
            break
        lab = new
        for j in range(k):
            if (lab == j).any():
                cent[j] = x[lab == j].mean(0)
    return cent


def test_group_kmeans_matches_a_reference_lloyd_per_group() -> None:
    from matching._scan import group_kmeans

    rng = np.random.default_rng(8)
    sizes = [0, 5, 13, 48, 200]
    x = np.concatenate([rng.normal(i * 10, 3, (n, 4)) for i, n in enumerate(sizes)]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    got = group_kmeans(x, offsets, 4, iters=10, min_members=6, far=1e4)
    assert got.shape == (5, 4, 4)
    assert (got[0] == 1e4).all()  # empty group: every slot far
    assert np.allclose(got[1, 0], x[0:5].mean(0), atol=1e-4) and (got[1, 1:] == 1e4).all()
    assert np.allclose(got[2, :2], _lloyd_reference(x[5:18], 2, 10), atol=1e-3)  # 13 // 6 = 2
    assert (got[2, 2:] == 1e4).all()
    assert np.allclose(got[3], _lloyd_reference(x[18:66], 4, 10), atol=1e-3)
    assert np.allclose(got[4], _lloyd_reference(x[66:], 4, 10), atol=1e-3)


def test_sub_words_trained_a_run_of_words_at_a_time_equal_one_pass_over_the_sample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import matching.vocabulary as vocabulary

    rng = np.random.default_rng(8)
    desc = rng.integers(0, 120, (6000, 128)).astype(np.uint8)
    voc = vocabulary.Vocabulary.train(desc[:3000], seed=1)
    busy = voc.size * vocabulary.POSTINGS_PER_WORD * 3
    one_pass = voc.with_sublevel(desc, busy).sub
    monkeypatch.setattr(vocabulary, "SUB_TRAIN_ROWS", 37)  # words hold about 24 rows: runs of one word and more
    runs = voc.with_sublevel(desc, busy).sub
    assert one_pass is not None and runs is not None and one_pass.shape == runs.shape
    assert (one_pass < 1e4).any(axis=2).sum() > voc.size  # some words really got several sub-words
    assert np.array_equal(one_pass, runs)


def test_sub_words_partition_words_without_changing_signatures(tmp_path: Path) -> None:
    from matching.vocabulary import MAX_SUB_WORDS, POSTINGS_PER_WORD, Vocabulary

    rng = np.random.default_rng(6)
    desc = rng.integers(0, 120, (6000, 128)).astype(np.uint8)
    voc = Vocabulary.train(desc[:3000], seed=1)
    assert voc.with_sublevel(desc, voc.size * POSTINGS_PER_WORD // 2) is voc  # not busy yet
    three = voc.with_sublevel(desc, voc.size * POSTINGS_PER_WORD * 3)
    assert three.k3 == 4 and three.size == voc.size * 4 and three.version != voc.version
    assert voc.with_sublevel(desc, voc.size * POSTINGS_PER_WORD * 1000).k3 == MAX_SUB_WORDS
    q = desc[:300]
    rows, sigs, words = voc.assign(q, n_coarse=2, n_fine=2)
    r1, s1, w1 = three.assign(q, n_coarse=2, n_fine=2, n_sub=1)
    assert np.array_equal(r1, rows) and np.array_equal(s1, sigs)
    assert np.array_equal(w1 // three.k3, words)
    # Two sub-words per word: the two nearest sub-centroids, nearest first.
    r2, s2, w2 = three.assign(q, n_coarse=2, n_fine=2, n_sub=2)
    assert np.array_equal(r2, np.repeat(rows, 2)) and np.array_equal(s2, np.repeat(sigs, 2))
    assert three.sub is not None
    x = q.astype(np.float32)
    for i in range(0, rows.shape[0], 97):
        d = ((x[rows[i]][None] - three.sub[words[i]]) ** 2).sum(1)
        assert (w2[2 * i : 2 * i + 2] % three.k3).tolist() == np.argsort(d, kind="stable")[:2].tolist()
    back = Vocabulary.from_bytes(three.to_bytes())
    assert back.version == three.version and back.sub is not None and np.array_equal(back.sub, three.sub)
    assert Vocabulary.from_bytes(voc.to_bytes()).sub is None


def _wgc_reference(d_angle: np.ndarray, d_log: np.ndarray, bins: int = 18, sb: float = 0.5) -> tuple[int, np.ndarray]:
    a = (d_angle / np.float32(360.0 / bins)).astype(np.int64) % bins
    s = np.clip(np.floor(d_log / sb).astype(np.int64) + 12, 0, 23)
    hist = np.bincount(a * 24 + s, minlength=bins * 24).reshape(bins, 24)
    pad = np.zeros((bins + 2, 26), np.int64)
    pad[1:-1, 1:-1] = hist
    pad[0, 1:-1], pad[-1, 1:-1] = hist[-1], hist[0]
    rows = pad[:-2] + pad[1:-1] + pad[2:]
    sm = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    pa, ps = np.unravel_index(int(np.argmax(sm)), sm.shape)
    da = np.abs(((a - pa + bins // 2) % bins) - bins // 2)
    mask = (da <= 1) & (np.abs(s - ps) <= 1)
    return int(mask.sum()), mask


def test_compiled_rotation_scale_peak_equals_the_numpy_reference() -> None:
    from matching._scan import rotation_scale_peak

    rng = np.random.default_rng(8)
    for n in (1, 5, 60, 400):
        d_angle = rng.uniform(0, 360, n).astype(np.float32)
        d_log = rng.normal(0, 2, n).astype(np.float32)
        if n > 5:  # a true copy: a cluster across the 0/360 wrap
            d_angle[: n // 3] = np.mod(rng.normal(0, 8, n // 3), 360).astype(np.float32)
            d_log[: n // 3] = rng.normal(-1.2, 0.2, n // 3).astype(np.float32)
        k, mask = rotation_scale_peak(d_angle, d_log, 18, 0.5)
        k0, mask0 = _wgc_reference(d_angle, d_log)
        assert k == k0 and np.array_equal(mask, mask0)
        if n > 5:
            assert mask[: n // 3].mean() > 0.8


def test_curve_support_counts_points_on_a_circle_or_a_line() -> None:
    from matching._scan import curve_support

    rng = np.random.default_rng(2)
    t = rng.uniform(0, 2 * np.pi, 30)
    circle = np.c_[100 + 50 * np.cos(t), 80 + 50 * np.sin(t)].astype(np.float32)
    scatter = rng.uniform(0, 300, (10, 2)).astype(np.float32)
    line = np.c_[np.linspace(0, 200, 12), np.linspace(10, 110, 12)].astype(np.float32)
    assert curve_support(np.vstack([circle, scatter]), 2.0) >= 28
    assert curve_support(np.vstack([line, scatter]), 2.0) >= 12
    spread = rng.uniform(0, 300, (40, 2)).astype(np.float32)
    assert curve_support(spread, 2.0) <= 8
    # seeded: the same answer every call
    assert len({curve_support(spread, 2.0) for _ in range(3)}) == 1


def test_limit_native_threads_leaves_every_openblas_with_one_thread() -> None:
    """The BLAS numba calls (SciPy's OpenBLAS) must be limited too: on a 2-core box its
    threads spinning beside the other engine process doubled the search's CPU time."""
    import json
    import os
    import subprocess
    import sys

    script = """
import ctypes, json, matching.features as l
l.limit_native_threads()
paths = {ln.split()[-1] for ln in open('/proc/self/maps') if 'openblas' in ln.lower() and '.so' in ln}
out = []
for p in sorted(paths):
    lib = ctypes.CDLL(p)
    for fn in ('scipy_openblas_get_num_threads64_', 'scipy_openblas_get_num_threads',
               'openblas_get_num_threads64_', 'openblas_get_num_threads'):
        if hasattr(lib, fn):
            out.append([p.rsplit('/', 1)[-1], getattr(lib, fn)()])
            break
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if "NUM_THREADS" not in k}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    found = json.loads(done.stdout)
    assert any("scipy_openblas" in name for name, _ in found), found
    assert all(n == 1 for _, n in found), found


@pytest.mark.parametrize("first_image", [0, 150_000])  # past 65,536 images: several runs a word
def test_segment_build_by_parts_equals_one_stable_sort_of_their_concatenation(first_image: int) -> None:
    """The counting sort that builds a segment part by part (freeing each) gives exactly the
    arrays of a stable sort by word of all parts concatenated, dead images dropped; images
    read back from their low bits and runs are the parts' own."""
    from matching.postings import PostingsIndex, _image_blocks, _ImageInfo, _Quantised
    from matching.vocabulary import Vocabulary

    rng = np.random.default_rng(3)
    n_words, n_images = 97, 40
    vocab = Vocabulary.train(rng.integers(0, 120, (3000, 128)).astype(np.uint8), seed=1)
    assert vocab.size >= n_words
    ix = PostingsIndex(vocab=vocab)
    # Images a few thousand apart from ``first_image`` on, so a word's postings span runs.
    numbers = first_image + np.arange(n_images) * (1 if first_image == 0 else 1_778)
    total = int(numbers[-1]) + 1
    ix._images = [_ImageInfo(0, 0, False, 0)] * total
    ix._alive = rng.random(total) > 0.3
    assert (_image_blocks(total) > 1) == (first_image > 0)
    parts = []
    for img in numbers.tolist():
        m = int(rng.integers(0, 60))  # some parts empty
        parts.append(_Quantised(rng.integers(0, n_words, m).astype(np.int32),
                                rng.integers(0, 2**63, m, dtype=np.uint64), np.full(m, img, np.int32),
                                rng.integers(0, 2**16, (m, 2)).astype(np.uint16),
                                rng.integers(0, 256, (m, 2)).astype(np.uint8)))
    for drop_dead in (True, False):
        cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("words", "image", "sig", "xy", "sa")}
        if drop_dead:
            keep = ix._alive[cat["image"]]
            cat = {k: v[keep] for k, v in cat.items()}
        order = np.argsort(cat["words"], kind="stable")  # the reference: one stable sort by word
        offsets = np.searchsorted(cat["words"][order], np.arange(vocab.size + 1))
        given = list(parts)
        got = ix._build(given, drop_dead=drop_dead)
        assert given == []  # consumed
        assert np.array_equal(got.offsets, offsets)
        assert got.blocks == _image_blocks(total)
        assert np.array_equal(got.images(), cat["image"][order])
        assert np.array_equal(got.image_lo, (cat["image"][order] & 0xFFFF).astype(np.uint16))
        for k in ("sig", "xy", "sa"):
            assert np.array_equal(getattr(got, k), cat[k][order]), k
        assert got.n == cat["image"].shape[0]
        if drop_dead:  # the case is real: some postings were dead
            assert got.n < sum(len(p.words) for p in parts)


def test_top_images_ranks_voted_images_by_normalised_votes_ties_to_the_lower_image() -> None:
    from matching.postings import _top_images

    rng = np.random.default_rng(3)
    n = 5_000
    votes = np.where(rng.random(n) < 0.3, rng.integers(1, 6, n) * 0.5, 0.0)  # few values: many ties
    nkp = rng.choice(np.array([0, 300, 1200], np.int64), n)
    rank = votes / np.sqrt(np.maximum(nkp, 1) / 1000.0 + 1.0)
    voted = np.flatnonzero(votes > 0)
    want = sorted(voted.tolist(), key=lambda i: (-rank[i], i))
    for top in (0, 1, 24, 500, voted.shape[0], n):
        assert _top_images(votes, nkp, top).tolist() == want[:top]
    assert _top_images(np.zeros(10), np.ones(10, np.int64), 24).shape == (0,)


def test_distinct_best_equals_a_plain_reference_for_small_and_large_keypoint_groups() -> None:
    """Groups of 1 to 150 hits per query keypoint (the compiled loop sorts up to 64 by
    insertion and more with a merge sort) give what a direct reading of the rule gives."""
    from matching._scan import distinct_best

    rng = np.random.default_rng(21)
    sizes = rng.choice(np.array([1, 2, 3, 10, 63, 64, 65, 150]), 80)
    qrow = np.repeat(np.arange(sizes.shape[0]), sizes).astype(np.int32)
    n = qrow.shape[0]
    image = rng.integers(0, 6, n).astype(np.int32)  # few images: several hits per (keypoint, image)
    ham = rng.integers(0, 23, n).astype(np.uint8)
    pos = rng.permutation(n).astype(np.int64)
    xy = rng.integers(0, 40, (n, 2)).astype(np.float32)
    want = []
    for r in range(sizes.shape[0]):
        rows = np.flatnonzero(qrow == r)
        for img in np.unique(image[rows]):
            mine = rows[image[rows] == img]
            mine = mine[np.argsort(ham[mine], kind="stable")]  # first of equally close wins
            best = mine[0]
            far = [b for b in mine[1:] if (np.abs(xy[pos[b]] - xy[pos[best]]) > 6.0).any()]
            second = int(ham[far[0]]) if far else 255
            if second - int(ham[best]) >= 3:
                want.append(int(best))
    got = distinct_best(qrow, image, ham, pos, xy, 6.0, 3)
    assert sorted(got.tolist()) == sorted(want) and len(want) > 100


def test_a_postings_keypoint_size_and_orientation_bytes_lie_within_half_a_step() -> None:
    """A posting keeps its keypoint's size in 1/16 octave and its orientation in 360/256 degree
    steps: back within half a step (of the float16 pair they are made from), the angle wrapping."""
    from matching.postings import ANGLE_STEP, SCALE_STEP, sa_codes, sa_values

    rng = np.random.default_rng(8)
    pair = np.stack([np.exp2(rng.uniform(-3.0, 11.0, 5000)), rng.uniform(0.0, 360.0, 5000)], axis=1)
    f16 = pair.astype(np.float16)
    back = sa_values(sa_codes(f16))
    exact = f16.astype(np.float64)
    assert np.abs(np.log2(back[:, 0]) - np.log2(exact[:, 0])).max() <= SCALE_STEP / 2 + 1e-6
    turn = np.abs(back[:, 1] - exact[:, 1]) % 360.0
    assert np.minimum(turn, 360.0 - turn).max() <= ANGLE_STEP / 2 + 1e-4
    ends = sa_codes(np.array([[0.0, 359.9], [6e4, 0.0], [1.0, 180.0]], np.float16))
    assert ends.tolist() == [[0, 0], [255, 0], [64, 128]]
