"""Calibration on a tiny registry: writes a model the engine then uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from matching.calibrate import _threshold_for, calibrate, fit_logistic, make_negatives
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
