"""Engine behaviour on self-made images: crops, pastes, flips, owners, persistence."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from matching.engine import Engine, ScoreModel, WorkRef


def textured(seed: int, w: int = 480, h: int = 360) -> np.ndarray:
    """A detailed RGB picture (shapes, lines, letters) with plenty of keypoints."""
    rng = np.random.default_rng(seed)
    im = np.zeros((h, w, 3), np.uint8)
    im[:] = rng.integers(0, 256, 3)
    for _ in range(60):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        k = int(rng.integers(0, 4))
        if k == 0:
            cv2.circle(im, (x, y), int(rng.integers(4, 40)), col, -1)
        elif k == 1:
            cv2.rectangle(im, (x, y), (x + int(rng.integers(5, 60)), y + int(rng.integers(5, 60))), col, -1)
        elif k == 2:
            cv2.line(im, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), col, int(rng.integers(1, 5)))
        else:
            pts = rng.integers(0, [w, h], (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(im, [pts], col)
    return cv2.GaussianBlur(im, (0, 0), 0.8)


def scene(seed: int, w: int = 640, h: int = 480) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).copy()


def encode(a: np.ndarray, fmt: str = "JPEG", **kw: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, fmt, **kw)
    return buf.getvalue()


def logo_rgba(seed: int, side: int = 400) -> bytes:
    """A flat white-and-colour logo on transparency (vanishes on white)."""
    rng = np.random.default_rng(seed)
    rgba = np.zeros((side, side, 4), np.uint8)
    for _ in range(14):
        col = (*(int(v) for v in rng.integers(0, 256, 3)), 255)
        pts = rng.integers(0, side, (int(rng.integers(3, 6)), 2)).astype(np.int32)
        cv2.fillPoly(rgba, [pts], col)
    cv2.putText(rgba, "ZQX", (20, side // 2), cv2.FONT_HERSHEY_SIMPLEX, 3.0, (255, 255, 255, 255), 12)
    return encode(rgba, "PNG")


WORKS = {1: textured(1), 2: textured(2), 3: textured(3), 4: textured(4)}
OWNER = {1: 10, 2: 10, 3: 20, 4: 20, 5: 20}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("engine")
    e = Engine(d)
    for wid, img in WORKS.items():
        e.register(WorkRef(wid, OWNER[wid], "artwork"), encode(img, "PNG"))
    e.register(WorkRef(5, OWNER[5], "logo"), logo_rgba(5))
    return d


@pytest.fixture()
def engine(registry: Path) -> Engine:
    return Engine(registry)


def matches(cands: list, wid: int) -> bool:  # type: ignore[type-arg]
    return any(c.work_id == wid and c.match for c in cands)


def test_whole_copy_recompressed_and_resized(engine: Engine) -> None:
    small = cv2.resize(WORKS[2], (240, 180), interpolation=cv2.INTER_AREA)
    cands = engine.analyse(encode(small, quality=60), name="u.jpg")
    assert cands and cands[0].work_id == 2 and cands[0].match
    assert [c.work_id for c in cands if c.match] == [2]
    assert cands[0].signals["inliers"] >= 10


def test_crop_gives_polygon_of_the_whole_work(engine: Engine) -> None:
    crop = WORKS[1][60:300, 100:420]  # (y0:y1, x0:x1)
    cands = engine.analyse(encode(crop, quality=85))
    top = cands[0]
    assert top.work_id == 1 and top.match
    assert top.region is not None
    got = np.array(top.region)
    want = np.array([[-100, -60], [380, -60], [380, 300], [-100, 300]], float)
    assert np.abs(got - want).max() < 8.0


def test_partial_copy_pasted_into_scene_has_its_region(engine: Engine) -> None:
    bg = scene(50)
    part = cv2.resize(WORKS[3], (240, 180), interpolation=cv2.INTER_AREA)
    bg[200:380, 300:540] = part
    cands = engine.analyse(encode(bg, quality=80))
    top = cands[0]
    assert top.work_id == 3 and top.match
    got = np.array(top.region)
    want = np.array([[300, 200], [540, 200], [540, 380], [300, 380]], float)
    assert np.abs(got - want).max() < 6.0


def test_region_is_in_source_pixels_when_decoding_shrinks(engine: Engine) -> None:
    big = cv2.resize(WORKS[4], (1440, 1080), interpolation=cv2.INTER_CUBIC)
    cands = engine.analyse(encode(big, quality=90))
    top = cands[0]
    assert top.work_id == 4 and top.match and top.region is not None
    xs = [p[0] for p in top.region]
    assert min(xs) < 15 and max(xs) > 1420


def test_mirrored_copy_found(engine: Engine) -> None:
    flipped = np.ascontiguousarray(WORKS[2][:, ::-1])
    rot = cv2.warpAffine(flipped, cv2.getRotationMatrix2D((240, 180), 12, 0.8), (480, 360))
    cands = engine.analyse(encode(rot, quality=75))
    assert cands[0].work_id == 2 and cands[0].match


def test_logo_with_alpha_found_on_dark_photo(engine: Engine) -> None:
    dec = Image.open(io.BytesIO(logo_rgba(5))).convert("RGBA").resize((200, 200))
    bg = Image.fromarray((scene(60) // 4).astype(np.uint8))
    bg.paste(dec, (220, 140), dec)
    cands = engine.analyse(encode(np.asarray(bg), quality=85))
    assert matches(cands, 5)


def test_unrelated_images_do_not_match(engine: Engine) -> None:
    for seed in (100, 101, 102):
        cands = engine.analyse(encode(textured(seed), quality=80))
        assert not any(c.match for c in cands), cands
    assert not any(c.match for c in engine.analyse(encode(scene(7))))


def test_owner_filter(engine: Engine) -> None:
    data = encode(WORKS[3], quality=85)
    assert matches(engine.analyse(data, owner_ids=[20]), 3)
    assert engine.analyse(data, owner_ids=[10]) == [] or not matches(engine.analyse(data, owner_ids=[10]), 3)
    assert all(c.owner_id == 10 for c in engine.analyse(data, owner_ids=[10]))


def test_analyse_batch_keeps_order(engine: Engine) -> None:
    out = engine.analyse_batch([(encode(WORKS[1]), "a"), (encode(scene(9)), "b"), (encode(WORKS[4]), "c")])
    assert out[0][0].work_id == 1 and not any(c.match for c in out[1]) and out[2][0].work_id == 4


def test_register_twice_and_unregister(tmp_path: Path) -> None:
    e = Engine(tmp_path)
    data = encode(WORKS[1], "PNG")
    e.register(WorkRef(7, 1, "artwork"), data)
    e.register(WorkRef(7, 1, "artwork"), data)
    cands = e.analyse(encode(WORKS[1], quality=80))
    assert [c.work_id for c in cands if c.match] == [7]
    assert e.index.work_ids == [7]
    e.unregister(7)
    e.unregister(7)  # unknown ids are ignored
    e.unregister(12345)
    assert e.analyse(encode(WORKS[1], quality=80)) == []
    # Re-registering under the same id after removal works again.
    e.register(WorkRef(7, 1, "artwork"), data)
    assert matches(e.analyse(encode(WORKS[1], quality=80)), 7)


def test_persistence_and_other_process_registrations(tmp_path: Path) -> None:
    writer = Engine(tmp_path)
    writer.register(WorkRef(1, 1, "artwork"), encode(WORKS[1], "PNG"))
    reader = Engine(tmp_path)  # a fresh process's engine loads from disk
    assert matches(reader.analyse(encode(WORKS[1], quality=80)), 1)
    # Added and removed by "another process": the reader notices on its next call.
    writer.register(WorkRef(2, 1, "artwork"), encode(WORKS[2], "PNG"))
    assert matches(reader.analyse(encode(WORKS[2], quality=80)), 2)
    writer.unregister(1)
    assert not matches(reader.analyse(encode(WORKS[1], quality=80)), 1)


def test_pdq_lookup_follows_other_processes_changes(tmp_path: Path) -> None:
    """The reader's PDQ index is kept in step with the registry change by change: added,
    replaced and removed works, never a stale hash."""
    writer = Engine(tmp_path)
    writer.register(WorkRef(1, 1, "artwork"), encode(WORKS[1], "PNG"))
    reader = Engine(tmp_path)
    assert reader._pdq_search(WORKS[1], None) == {1: 0}
    writer.register(WorkRef(2, 3, "artwork"), encode(WORKS[2], "PNG"))
    reader.index.refresh()
    assert 2 in reader._pdq_search(WORKS[2], None) and reader._pdq_search(WORKS[2], [3]) == {2: 0}
    writer.register(WorkRef(2, 3, "artwork"), encode(WORKS[4], "PNG"))  # work 2 replaced by another image
    reader.index.refresh()
    assert 2 not in reader._pdq_search(WORKS[2], None)
    assert reader._pdq_search(WORKS[4], [3]) == {2: 0}
    writer.unregister(1)
    reader.index.refresh()
    assert 1 not in reader._pdq_search(WORKS[1], None)
    assert len(reader._pdq) == 8  # work 2's eight dihedral hashes only


def test_calibration_file_sets_model_and_threshold(tmp_path: Path) -> None:
    e = Engine(tmp_path)
    e.register(WorkRef(1, 1, "artwork"), encode(WORKS[1], "PNG"))
    data = encode(WORKS[1], quality=80)
    assert e.analyse(data)[0].match
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"local": [-60.0, 0.0, 0.0, 0.0], "pdq": [-60.0, 0.0], "threshold": 0.5}))
    assert not any(c.match for c in e.analyse(data))
    cal.write_text(json.dumps(ScoreModel(threshold=0.2).to_json()))
    assert e.model.threshold == 0.2
    cal.unlink()
    assert e.model.threshold == 0.5 and e.analyse(data)[0].match


def test_near_duplicate_work_is_explained_away(tmp_path: Path) -> None:
    e = Engine(tmp_path)
    base = textured(11)
    variant = np.ascontiguousarray(base[:, :, ::-1])  # recoloured variant of the same drawing
    variant[:, 240:] = textured(12)[:, 240:]  # ... half of it redrawn
    e.register(WorkRef(1, 1, "artwork"), encode(base, "PNG"))
    e.register(WorkRef(2, 1, "artwork"), encode(variant, "PNG"))
    cands = e.analyse(encode(base, quality=85))
    assert [c.work_id for c in cands if c.match] == [1]
    other = [c for c in cands if c.work_id == 2]
    assert not other or other[0].signals.get("explained_by") == 1.0 or other[0].score < 0.5


def test_busy_words_are_split_into_sub_words_and_copies_still_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry whose words hold more postings than POSTINGS_PER_WORD gets a third
    vocabulary level at its next retrain; crops, pastes and flips are still found, and
    other processes pick the new vocabulary up from disk."""
    from matching import vocabulary as local

    e = Engine(tmp_path)
    for wid, img in WORKS.items():
        e.register(WorkRef(wid, OWNER[wid], "artwork"), encode(img, "PNG"))
    assert e.index.vocab is not None and e.index.vocab.k3 == 1
    monkeypatch.setattr(local, "POSTINGS_PER_WORD", 2)
    e.retrain()
    vocab = e.index.vocab
    assert vocab is not None and vocab.k3 == local.MAX_SUB_WORDS
    reader = Engine(tmp_path)
    assert reader.index.vocab is not None and reader.index.vocab.version == vocab.version
    crop = WORKS[1][60:300, 100:420]
    bg = scene(50)
    bg[200:380, 300:540] = cv2.resize(WORKS[3], (240, 180), interpolation=cv2.INTER_AREA)
    flipped = np.ascontiguousarray(WORKS[2][:, ::-1])
    for eng in (e, reader):
        assert [c.work_id for c in eng.analyse(encode(crop, quality=85)) if c.match] == [1]
        assert [c.work_id for c in eng.analyse(encode(bg, quality=80)) if c.match] == [3]
        assert [c.work_id for c in eng.analyse(encode(flipped, quality=80)) if c.match] == [2]
        assert not any(c.match for c in eng.analyse(encode(textured(99), quality=80)))


def _tilted(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = np.array([[40, 30], [w - 10, 0], [w - 30, h - 10], [0, h - 40]], np.float32)
    return np.asarray(cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h),
                                          borderMode=cv2.BORDER_REPLICATE), np.uint8)


@pytest.mark.parametrize("favour", ["similarity", "homography"])
def test_the_alignment_kept_is_the_one_the_dense_check_agrees_with(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, favour: str,
) -> None:
    """A tilted copy verifies as a homography refined from a similarity: both are
    offered, and the one the calibrated model rates higher with its dense agreement wins."""
    import matching.engine as engine_mod

    seen: list[bool] = []

    def fake_dense(thumbs: object, size: object, mirrored: bool, H: np.ndarray, gray: object) -> float:
        affine = bool(np.allclose(H[2], [0.0, 0.0, 1.0]))
        seen.append(affine)
        return 0.9 if affine == (favour == "similarity") else -0.5

    monkeypatch.setattr(engine_mod, "dense_agreement", fake_dense)
    cands = engine.analyse(encode(_tilted(WORKS[3]), quality=90))
    top = cands[0]
    assert top.work_id == 3
    assert True in seen and False in seen  # both alignments were checked
    assert top.signals["dense"] == 0.9
    region = np.array(top.region)
    sides = np.linalg.norm(np.roll(region, -1, axis=0) - region, axis=1)
    rectangle = np.allclose(sides[0], sides[2], rtol=1e-3) and np.allclose(sides[1], sides[3], rtol=1e-3)
    assert rectangle == (favour == "similarity")
