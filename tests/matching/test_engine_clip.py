"""The open_clip embedder inside the engine (random weights: pretrained=None).

Works' embeddings go to the ``clip`` named vector of the VectorIndex as they
are registered and leave it when removed; an upload's nearest works carry
their cosine for the reviewer; CLIP decides nothing until calibration has
fitted it for the deployed model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from config.settings import Settings, load_settings
from matching.decode import DecodedImage
from matching.engine import Engine, ScoreModel, WorkRef, build_engine

from .test_engine import encode, scene, textured


@pytest.fixture(scope="module")
def clip_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("clipdata")
    return load_settings(data_dir=data, matching={"use_embedder": True, "clip_pretrained": "",
                                                  "clip_model": "ViT-B-32", "device": "cpu"})


@pytest.fixture(scope="module")
def engine(clip_settings: Settings) -> Engine:
    eng = build_engine(clip_settings)
    assert eng.vectors is not None and eng.vectors.embedder is not None
    eng.register(WorkRef(1, 10, "artwork"), encode(textured(1)))
    eng.register(WorkRef(2, 20, "artwork"), encode(textured(2)))
    return eng


def test_registering_writes_clip_vectors_and_removing_deletes_them(clip_settings: Settings, engine: Engine) -> None:
    assert engine.vectors is not None
    assert engine.vectors.index.count() >= 2
    engine.register(WorkRef(3, 10, "artwork"), encode(textured(3)))
    before = engine.vectors.index.count()
    engine.unregister(3)
    assert engine.vectors.index.count() < before
    assert 3 not in engine.clip_candidates(_decoded(textured(3)))


def _decoded(a: np.ndarray) -> DecodedImage:
    from matching.decode import decode_image

    return decode_image(encode(a, "PNG"), max_side=768)


def test_copy_carries_its_clip_cosine_and_the_decision_stays_with_verification(engine: Engine) -> None:
    copy = textured(1)[20:340, 30:450]
    cands = engine.analyse(encode(copy, quality=80))
    top = cands[0]
    assert top.work_id == 1 and top.match
    assert -1.0 <= top.signals["clip"] <= 1.0
    assert top.signals["local"] > 0.5


def test_uncalibrated_clip_never_decides(engine: Engine) -> None:
    assert engine.model.clip is None
    for cand in engine.analyse(encode(scene(77), quality=85)):
        assert not cand.match
        assert cand.signals.get("local", 0.0) == 0.0 or cand.score < engine.model.threshold


def test_precomputed_embedding_gives_the_same_candidates(engine: Engine) -> None:
    img = _decoded(textured(2)[10:300, 10:400])
    assert engine.vectors is not None and engine.vectors.embedder is not None
    vec = np.asarray(engine.vectors.embedder.embed([img]))[0]  # type: ignore[attr-defined]
    computed = engine.clip_candidates(img)
    given = engine.clip_candidates(img, embedding=vec)
    assert computed.keys() == given.keys()
    for wid in computed:
        assert given[wid] == pytest.approx(computed[wid], abs=1e-4)


def test_batch_analysis_matches_single_analysis(engine: Engine) -> None:
    items = [(encode(textured(1)[0:300, 0:400], quality=85), "a"), (encode(scene(5), quality=85), "b")]
    batch = engine.analyse_batch(items)
    single = [engine.analyse(data, name=name) for data, name in items]
    assert [[c.work_id for c in r] for r in batch] == [[c.work_id for c in r] for r in single]
    for rb, rs in zip(batch, single, strict=True):
        for cb, cs in zip(rb, rs, strict=True):
            assert cb.signals.get("clip", 0.0) == pytest.approx(cs.signals.get("clip", 0.0), abs=1e-3)


def test_clip_model_round_trips_and_weighs_in_once_calibrated() -> None:
    m = ScoreModel(clip=(-40.0, 50.0))
    again = ScoreModel.from_json(m.to_json(), 0.5)
    assert again.clip == (-40.0, 50.0)
    assert m.clip_prob(0.95) > 0.99 and m.clip_prob(0.5) < 1e-6
    assert m.combine(0.0, 0.0, m.clip_prob(0.95)) > 0.99
    assert ScoreModel().clip_prob(0.99) == 0.0


def test_embedder_off_means_no_vectors(tmp_path: Path) -> None:
    eng = build_engine(load_settings(data_dir=tmp_path, matching={"use_embedder": False, "descriptor": ""}))
    assert eng.vectors is None
    assert eng.clip_candidates(_decoded(textured(1))) == {}
    # The descriptor alone (the default) opens the index with its vector only, and no CLIP.
    eng = build_engine(load_settings(data_dir=tmp_path / "d", matching={"use_embedder": False}))
    assert eng.vectors is not None and eng.vectors.embedder is None and eng.has_descriptor
    assert [s.name for s in eng.vectors.index.specs] == ["sscd"]
    assert eng.clip_candidates(_decoded(textured(1))) == {}
