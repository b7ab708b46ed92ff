"""Calibrate the engine's score on the registry itself.

:func:`calibrate` makes transformed copies of registered works (crops,
resizes, recompression, mirror, rotation, padding, colour and blur changes,
captions, and pastes of the work into synthetic scenes) and synthetic
unrelated images (scenes and flat "logo-like" shapes), analyses them with the
engine exactly as uploads are analysed, and fits:

- a logistic model of P(copy | local evidence) on ``log1p(inliers)``,
  ``inlier ratio``, ``log(coverage + 0.01)`` and the dense edge agreement;
- a logistic model of P(copy | PDQ distance);
- for each embedding that is on (CLIP, the copy-detection descriptor), a
  logistic model of P(copy | best cosine) that alone reaches the target
  precision at 0.5, or none when that embedding does not separate copies.

Every (image, work) candidate pair is one example: a copy's pair with its
own work is positive, every other pair negative. The decision threshold is
then the lowest score whose pairs reach ``target_precision`` on this
calibration set, and the logistic bias is shifted so that this threshold
reads 0.5: *a score of 0.5 or more means the pair is at or above the target
precision on the calibration distribution*. The result is written to the
engine's document store (:data:`storage.documents.CALIBRATION`: the file
``DATA_DIR/calibration.json``, or a database row in "services" mode), which
every engine process picks up.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from matching.decode import DecodedImage, decode_image
from matching.engine import DENSE_UNKNOWN, Engine, ScoreModel, WorkRef

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["Calibration", "calibrate", "fit_logistic", "make_copies", "make_negatives",
           "run_calibration"]

log = logging.getLogger(__name__)

U8 = npt.NDArray[Any]  # image arrays (OpenCV returns loosely typed arrays)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured and wrote."""

    model: ScoreModel
    positives: int  # true pairs among calibration images
    negatives: int  # wrong pairs offered as candidates
    recall: float  # of true pairs at the chosen threshold
    precision: float  # at the chosen threshold

    def __str__(self) -> str:
        return (f"calibrated on {self.positives} true and {self.negatives} wrong pairs: threshold 0.5 "
                f"= precision {self.precision:.4f} at recall {self.recall:.3f} on the calibration set "
                f"(target {self.model.target_precision})")

    def to_json(self) -> dict[str, object]:
        d = self.model.to_json()
        d.update(positives=self.positives, negatives=self.negatives, recall=self.recall,
                 precision=self.precision)
        return d


# --------------------------------------------------------------------------- synthetic images


def _scene(rng: np.random.Generator, w: int, h: int) -> U8:
    """A synthetic background: gradient, blobs, lines and noise."""
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h, dtype=np.float32)
    grad = (c1[None, :] * (1 - t[:, None]) + c2[None, :] * t[:, None]).astype(np.uint8)
    img = np.ascontiguousarray(np.broadcast_to(grad[None, :, :], (h, w, 3)) if grad.shape[0] == w
                               else np.broadcast_to(grad[:, None, :], (h, w, 3)))
    img = img.copy()
    for _ in range(int(rng.integers(3, 25))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(4, max(5, min(w, h) // 4)))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), r, col, -1)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), col,
                     int(rng.integers(1, 6)))
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 4.0))), np.uint8)
    noise = rng.normal(0, rng.uniform(0, 8), img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _shape_logo(rng: np.random.Generator, side: int) -> U8:
    """A flat, logo-like graphic: polygons, circles and letters on white."""
    img = np.full((side, side, 3), 255, np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        col = tuple(int(v) for v in rng.integers(0, 220, 3))
        k = rng.random()
        if k < 0.4:
            pts = rng.integers(0, side, (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], col)
        elif k < 0.7:
            cv2.circle(img, (int(rng.integers(0, side)), int(rng.integers(0, side))),
                       int(rng.integers(side // 10, side // 3)), col, -1)
        else:
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(1, 5))))
            cv2.putText(img, text, (int(rng.integers(0, side // 2)), int(rng.integers(side // 3, side))),
                        int(rng.choice([0, 2, 3, 4])), float(rng.uniform(1.0, 3.0)), col,
                        int(rng.integers(2, 8)))
    return img


def _jpeg(img: U8, q: int) -> U8:
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    if not ok:
        return img
    dec: U8 = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return np.ascontiguousarray(dec[:, :, ::-1])


def _fit_long(img: U8, side: int) -> U8:
    h, w = img.shape[:2]
    s = side / max(h, w)
    return cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))),
                      interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _whole_op(img: U8, op: str, rng: np.random.Generator) -> U8:
    h, w = img.shape[:2]
    if op == "crop":
        keep = math.sqrt(rng.uniform(0.6, 0.95))
        cw, ch = max(16, int(w * keep)), max(16, int(h * keep))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return np.ascontiguousarray(img[y:y + ch, x:x + cw])
    if op == "resize":
        return _fit_long(img, max(64, int(max(h, w) * rng.uniform(0.3, 0.8))))
    if op == "jpeg":
        return _jpeg(img, int(rng.integers(15, 60)))
    if op == "hflip":
        return np.ascontiguousarray(img[:, ::-1])
    if op == "rotate":
        deg = float(rng.uniform(3, 20)) * (1 if rng.random() < 0.5 else -1)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    if op == "pad":
        p = int(max(h, w) * rng.uniform(0.1, 0.3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        return cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_CONSTANT, value=fill)
    if op == "color":
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-20, 20))) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30), 0, 255)
        return np.asarray(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB), np.uint8)
    if op == "gray":
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if op == "blur":
        return cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.8, 2.5)))
    if op == "noise":
        return np.clip(img + rng.normal(0, rng.uniform(4, 20), img.shape), 0, 255).astype(np.uint8)
    if op == "caption":
        out = img.copy()
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        y = int(rng.integers(h // 6, h))
        cv2.putText(out, "copy " + str(int(rng.integers(0, 999))), (int(rng.integers(0, max(1, w // 3))), y),
                    cv2.FONT_HERSHEY_SIMPLEX, max(0.5, w / 400.0), col, max(1, w // 200))
        return out
    raise ValueError(op)


_WHOLE_OPS = ("crop", "resize", "jpeg", "hflip", "rotate", "pad", "color", "gray", "blur",
              "noise", "caption")


def _paste(img: DecodedImage, rng: np.random.Generator) -> U8:
    """The work pasted into a synthetic scene, covering 10-50% of it, maybe tilted."""
    side = int(rng.integers(400, 641))
    W, H = side, int(side * rng.uniform(0.6, 1.0))
    scene = _scene(rng, W, H)
    src = np.asarray(img.rgb)
    alpha: npt.NDArray[np.float32] | None = None
    if img.rgb_on_black is not None:
        # Recover coverage from the two flattenings (white - black = 255 * (1 - a)).
        diff = src.astype(np.int32) - np.asarray(img.rgb_on_black).astype(np.int32)
        alpha = (1.0 - diff.mean(axis=2) / 255.0).astype(np.float32)
        src = np.asarray(img.rgb_on_black)
    h, w = src.shape[:2]
    s = math.sqrt(rng.uniform(0.1, 0.5) * W * H / (w * h))
    s = min(s, 0.92 * W / w, 0.92 * H / h)
    nw, nh = max(8, round(w * s)), max(8, round(h * s))
    obj = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA)
    a: npt.NDArray[Any] = (cv2.resize(alpha, (nw, nh), interpolation=cv2.INTER_AREA) if alpha is not None
         else np.ones((nh, nw), np.float32))
    deg = float(rng.uniform(-10, 10)) if rng.random() < 0.5 else 0.0
    if deg:
        m = cv2.getRotationMatrix2D((nw / 2, nh / 2), deg, 1.0)
        obj = cv2.warpAffine(obj, m, (nw, nh))
        a = cv2.warpAffine(a, m, (nw, nh))
    x, y = int(rng.integers(0, W - nw + 1)), int(rng.integers(0, H - nh + 1))
    roi: npt.NDArray[Any] = scene[y:y + nh, x:x + nw].astype(np.float32)
    if alpha is not None:
        blended = obj.astype(np.float32)  # premultiplied on black
        roi = blended + roi * (1.0 - a[:, :, None])
    else:
        roi = obj.astype(np.float32) * a[:, :, None] + roi * (1.0 - a[:, :, None])
    scene[y:y + nh, x:x + nw] = np.clip(roi, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        scene = _jpeg(scene, int(rng.integers(40, 90)))
    return scene


def make_copies(img: DecodedImage, rng: np.random.Generator, n_whole: int, n_partial: int) -> list[U8]:
    """Transformed copies of one work (RGB arrays)."""
    out: list[U8] = []
    for _ in range(n_whole):
        x = np.asarray(img.rgb)
        x = _fit_long(x, int(rng.integers(200, 641)))
        ops = list(rng.choice(_WHOLE_OPS, size=int(rng.integers(1, 4)), replace=False))
        for op in ops:
            x = _whole_op(x, str(op), rng)
        out.append(x)
    for _ in range(n_partial):
        out.append(_paste(img, rng))
    return out


def make_negatives(rng: np.random.Generator, n: int) -> list[U8]:
    """Unrelated synthetic images: scenes, and flat logo-like shapes on scenes."""
    out: list[U8] = []
    for i in range(n):
        side = int(rng.integers(300, 641))
        if i % 2 == 0:
            out.append(_scene(rng, side, int(side * rng.uniform(0.6, 1.0))))
        else:
            logo = _shape_logo(rng, int(rng.integers(128, 385)))
            fake = DecodedImage(logo, None, logo.shape[1], logo.shape[0], False, "PNG")
            out.append(_paste(fake, rng) if rng.random() < 0.5 else _whole_op(logo, "jpeg", rng))
    return out


# --------------------------------------------------------------------------- fitting


def fit_logistic(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *, l2: float = 1e-2,
                 iters: int = 50) -> npt.NDArray[np.float64]:
    """L2-regularised logistic regression by Newton steps; returns ``[bias, w...]``."""
    X = np.hstack([np.ones((x.shape[0], 1)), x])
    w = np.zeros(X.shape[1])
    reg = np.full(X.shape[1], l2)
    reg[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
        g = X.T @ (p - y) + reg * w
        Hm = (X * (p * (1 - p))[:, None]).T @ X + np.diag(reg + 1e-9)
        step = np.linalg.solve(Hm, g)
        w -= step
        if float(np.abs(step).max()) < 1e-7:
            break
    return w


def _local_x(sig: dict[str, float]) -> list[float]:
    return [math.log1p(sig["inliers"]), sig["inliers"] / max(1.0, sig["tentative"]),
            math.log(sig["coverage"] + 0.01), sig.get("dense", DENSE_UNKNOWN)]


def calibrate(
    engine: Engine,
    works: Sequence[tuple[WorkRef, bytes]],
    target_precision: float = 0.99,
    *,
    max_works: int = 120,
    copies_whole: int = 2,
    copies_partial: int = 2,
    negatives: int = 200,
    seed: int = 0,
    write: bool = True,
) -> Calibration:
    """Fit the score model and threshold on synthetic copies of ``works``.

    ``works`` must be registered in ``engine`` already (the CLI passes the
    registry's works and their stored images). Writes the calibration
    document to ``engine.documents`` unless ``write`` is false.
    """
    if not 0.5 < target_precision < 1.0:
        raise ValueError("target_precision must be in (0.5, 1)")
    rng = np.random.default_rng(seed)
    chosen = list(works)
    if len(chosen) > max_works:
        chosen = [chosen[int(i)] for i in sorted(rng.choice(len(chosen), max_works, replace=False))]
    samples: list[tuple[U8, int | None]] = []
    for ref, data in chosen:
        img = decode_image(data, name=f"work {ref.work_id}", max_side=1024)
        for x in make_copies(img, rng, copies_whole, copies_partial):
            samples.append((x, ref.work_id))
    for x in make_negatives(rng, negatives):
        samples.append((x, None))

    local_rows: list[tuple[list[float], int]] = []
    pdq_rows: list[tuple[float, int]] = []
    clip_rows: list[tuple[float, int, bool]] = []
    sscd_rows: list[tuple[float, int, bool]] = []
    n_true = 0
    for x, truth in samples:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "PNG")
        up = decode_image(buf.getvalue(), max_side=768)
        a = engine.analyse_decoded(up)
        if truth is not None:
            n_true += 1
        usable = {wid for wid, v in a.verifications.items() if v.plausible and v.inliers >= 4}
        for wid, v in a.verifications.items():
            if wid in usable:
                sig = {"inliers": float(v.inliers), "tentative": float(v.tentative),
                       "coverage": v.coverage}
                if wid in a.dense:
                    sig["dense"] = a.dense[wid]
                local_rows.append((_local_x(sig), int(wid == truth)))
        for wid, d in a.pdq.items():
            pdq_rows.append((float(d), int(wid == truth)))
        # Where an embedding is the only evidence for a pair (see _fit_cosine).
        for wid, cos in engine.clip_candidates(up).items():
            clip_rows.append((float(cos), int(wid == truth), wid not in usable and wid not in a.pdq))
        for wid, (cos, _box) in engine.descriptor_candidates(up).items():
            sscd_rows.append((float(cos), int(wid == truth), wid not in usable and wid not in a.pdq))

    base = engine.model
    local = base.local
    if local_rows and len({y for _, y in local_rows}) == 2:
        w = fit_logistic(np.array([r for r, _ in local_rows], np.float64),
                         np.array([y for _, y in local_rows], np.float64))
        local = (float(w[0]), float(w[1]), float(w[2]), float(w[3]), float(w[4]))
    pdq = base.pdq
    if pdq_rows and len({y for _, y in pdq_rows}) == 2:
        w = fit_logistic(np.array([[d] for d, _ in pdq_rows], np.float64),
                         np.array([y for _, y in pdq_rows], np.float64))
        pdq = (float(w[0]), float(w[1]))

    # Scores of every verified pair under the fitted local model.
    xs = np.array([r for r, _ in local_rows], np.float64).reshape(-1, 4)
    labels = np.array([y for _, y in local_rows], np.int64)
    scores = 1.0 / (1.0 + np.exp(-(local[0] + xs @ np.array(local[1:], np.float64))))
    threshold, precision, recall = _threshold_for(scores, labels, target_precision, n_true)
    # Shift the local bias so the chosen threshold reads 0.5.
    shift = math.log(threshold / (1.0 - threshold)) if 0.0 < threshold < 1.0 else 0.0
    local = (local[0] - shift, local[1], local[2], local[3], local[4])
    clip = _fit_cosine(clip_rows, target_precision, n_true)
    sscd = _fit_cosine(sscd_rows, target_precision, n_true) if engine.has_descriptor else base.sscd
    model = ScoreModel(local=local, pdq=pdq, clip=clip, sscd=sscd, threshold=0.5,
                       target_precision=target_precision)
    cal = Calibration(model, int(labels.sum()), int((labels == 0).sum()), recall, precision)
    if write:
        from storage.documents import CALIBRATION

        assert engine.documents is not None  # set by Engine.__post_init__
        engine.documents.put(CALIBRATION, json.dumps(cal.to_json(), indent=1).encode("utf-8"))
    log.info("calibration: %d true / %d wrong pairs; threshold keeps precision %.4f, recall %.3f",
             cal.positives, cal.negatives, precision, recall)
    return cal


#: The steepest cosine slope an embedding term gets. A registry's synthetic copies
#: often separate perfectly, and likelihood then has no finite slope; at this one a
#: cosine 0.1 below the crossing reads 0.05 (the dev benchmark's fit is 18.5).
MAX_COSINE_SLOPE = 30.0


def _fit_cosine(rows: list[tuple[float, int, bool]], target: float, n_true: int) -> tuple[float, float] | None:
    """A logistic model of an embedding's cosine that alone reaches ``target`` precision at 0.5.

    ``rows`` are ``(cosine, is_copy, alone)``, ``alone`` where no other signal (a
    usable verified alignment, PDQ) has evidence for the pair. The crossing, the
    cosine that reads 0.5, is the lowest whose pairs reach ``target`` precision.
    The slope is fitted by likelihood with that crossing fixed, on the ``alone``
    pairs: the score adds its terms as independent evidence
    (:meth:`ScoreModel.combine`), so a term must say how likely a copy is where
    it is the only one to speak. Fitted on every pair, the copies that local
    features find at a low cosine (partial copies) flatten the slope, and a
    low cosine reads several times likelier than it is (docs/benchmarks.md,
    "The descriptor's term below the threshold").

    None (the embedding never decides) when it does not separate copies from
    other works: no embedder, random weights, or a model that finds no copy at
    that precision.
    """
    if not rows or len({y for _, y, _ in rows}) < 2:
        return None
    cos = np.array([c for c, _, _ in rows], np.float64)
    y = np.array([lbl for _, lbl, _ in rows], np.int64)
    crossing, _precision, recall = _threshold_for(cos, y, target, n_true)
    if recall <= 0.0:
        return None
    alone = np.array([a for _, _, a in rows], np.bool_)
    if len(set(y[alone].tolist())) < 2:
        alone[:] = True  # too few pairs of its own to fit on
    slope = _fit_slope(cos[alone] - crossing, y[alone].astype(np.float64))
    if slope <= 0.0:
        return None
    slope = min(slope, MAX_COSINE_SLOPE)
    return (float(-slope * crossing), float(slope))


def _fit_slope(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *, iters: int = 50) -> float:
    """Maximum-likelihood ``a`` of ``P(y) = sigmoid(a * x)`` (no bias) by Newton steps."""
    a = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * x, -30, 30)))
        g = float((x * (y - p)).sum())
        h = float((x * x * p * (1 - p)).sum()) + 1e-9
        step = g / h
        a += step
        if abs(step) < 1e-7:
            break
    return a


def _threshold_for(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], target: float,
                   n_true: int) -> tuple[float, float, float]:
    """Lowest score threshold whose pairs reach ``target`` precision."""
    if scores.shape[0] == 0:
        return 0.5, 1.0, 0.0
    order = np.argsort(-scores)
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    prec = tp / np.arange(1, y.shape[0] + 1)
    best = None
    for i in range(y.shape[0]):
        if i + 1 < y.shape[0] and s[i + 1] == s[i]:
            continue
        if prec[i] >= target:
            best = i
    if best is None:
        return float(min(0.999, s[0] + 1e-6)), 1.0, 0.0
    thr = float(s[best])
    return thr, float(prec[best]), float(tp[best] / max(1, n_true))


def run_calibration(settings: Settings, *, sessions: Any, blobs: Any, target_precision: float = 0.99,
                    write: bool = True) -> Calibration:
    """``artwatch calibrate``: calibrate on the registry in the database (``sessions``, a
    sessionmaker) and the blob store (``blobs``), both from the command line's services.
    With ``write`` false the fitted model is returned and the one in use is kept."""
    from sqlalchemy import select

    from matching.engine import build_engine
    from storage.models import Work

    with sessions() as s:
        rows = [(w.id, w.owner_id, w.kind.value, w.blob_sha256)
                for w in s.scalars(select(Work).order_by(Work.id))]
    works = [(WorkRef(wid, owner, kind), blobs.get(sha)) for wid, owner, kind, sha in rows]
    if not works:
        raise ValueError("no registered works to calibrate on")
    return calibrate(build_engine(settings), works, target_precision, write=write)
