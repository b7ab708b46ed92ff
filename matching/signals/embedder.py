"""The ``Embedder`` role: images -> unit-length float32 vectors, in batches.

An embedder implements two steps and the base class does the rest:

- :meth:`Embedder.prepare` turns one decoded uint8 HWC RGB image into the
  model's input, a uint8 HWC array of the embedder's :class:`Geometry`
  (CPU, per image; safe to call from many threads);
- :meth:`Embedder.forward` runs one batch of prepared arrays and returns
  ``(n, dim)`` unit float32 rows.

:meth:`Embedder.embed` is defined once, here, as prepare + forward in chunks
of ``batch_size``; works (registration) and uploads (analysis, the GPU
worker) all go through the same two steps, so both sides of a comparison are
prepared the same way. The GPU worker's bytes -> vectors path
(:func:`workers.batching.bytes_to_vectors`) decodes and resizes on the
device instead: it follows the same :class:`Geometry` with
:func:`fit_tensor` and hands the batch to :meth:`Embedder.forward_tensor`;
the contract suite (``tests/matching/test_embedder_contract.py``) holds the
two paths to a cosine above 0.999.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from matching.decode import DecodedImage
from matching.signals.base import Feature, Probe, Signal

__all__ = ["Embedder", "Fit", "Geometry", "ImageLike", "area_weights", "as_rgb", "fit_rgb", "fit_tensor",
           "shrinks_only", "unit_rows"]

ImageLike = DecodedImage | np.ndarray

#: How an image becomes a model input of side ``size``:
#: ``crop``: short side to ``size``, centre crop to ``size`` x ``size`` (CLIP);
#: ``square``: resized to ``size`` x ``size``, aspect not kept (SSCD's batched default);
#: ``short_side``: short side to ``size``, aspect kept, shapes differ per image.
Fit = Literal["crop", "square", "short_side"]


@dataclass(frozen=True)
class Geometry:
    """The input an embedder's model takes; see :data:`Fit`."""

    size: int
    fit: Fit


def as_rgb(im: ImageLike) -> npt.NDArray[np.uint8]:
    """The uint8 HWC RGB array of ``im`` (grey repeated, alpha dropped)."""
    arr = np.asarray(im.rgb if isinstance(im, DecodedImage) else im)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def _target(h: int, w: int, g: Geometry) -> tuple[int, int]:
    """(height, width) of the resize step before any crop."""
    if g.fit == "square":
        return g.size, g.size
    s = g.size / max(1, min(h, w))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if g.fit == "crop":
        nh, nw = max(g.size, nh), max(g.size, nw)
    return nh, nw


def fit_rgb(rgb: npt.NDArray[np.uint8], g: Geometry) -> npt.NDArray[np.uint8]:
    """``rgb`` resized (and cropped) to ``g`` with OpenCV: area filter when
    shrinking, cubic when enlarging. Releases the GIL."""
    h, w = rgb.shape[:2]
    nh, nw = _target(h, w, g)
    img = np.ascontiguousarray(rgb)
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if nh <= h and nw <= w else cv2.INTER_CUBIC
        img = np.asarray(cv2.resize(img, (nw, nh), interpolation=interp), np.uint8)
    if g.fit == "crop":
        top, left = (nh - g.size) // 2, (nw - g.size) // 2
        img = img[top : top + g.size, left : left + g.size]
    return np.ascontiguousarray(img)


def area_weights(n_in: int, n_out: int) -> npt.NDArray[np.float32]:
    """``(n_out, n_in)`` weights of OpenCV's INTER_AREA shrink from ``n_in`` to
    ``n_out`` samples (``computeResizeAreaTab``: each output averages the
    inputs it covers, fractional overlaps by their share)."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in), np.float32)
    for dx in range(n_out):
        f1 = dx * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s2 = min(int(np.floor(f2)), n_in - 1)
        s1 = min(int(np.ceil(f1)), s2)
        if s1 - f1 > 1e-3:
            w[dx, s1 - 1] += np.float32((s1 - f1) / cell)
        w[dx, s1:s2] += np.float32(1.0 / cell)
        if f2 - s2 > 1e-3:
            w[dx, s2] += np.float32(min(f2 - s2, 1.0, cell) / cell)
    return w


def shrinks_only(h: int, w: int, g: Geometry) -> bool:
    """Whether fitting an ``h`` x ``w`` image to ``g`` enlarges neither axis
    (what :func:`fit_tensor` takes)."""
    nh, nw = _target(h, w, g)
    return nh <= h and nw <= w


def fit_tensor(chw: Any, g: Geometry) -> Any:
    """The device twin of :func:`fit_rgb` for images it shrinks (see
    :func:`shrinks_only`): a uint8 ``(3, H, W)`` torch tensor on any device ->
    uint8 ``(H', W', 3)`` of ``g`` on the same device.

    The shrink is OpenCV's INTER_AREA written as two small matrix products
    with OpenCV's own weights (:func:`area_weights`), so the pixels are
    :func:`fit_rgb`'s but for rare rounding ties. That matters: the int8 SSCD
    model moves by 0.002 cosine when 0.1% of the pixels change by one level.
    Enlarging is left to :func:`fit_rgb` on the host (the image is small
    then): opencv-python's INTER_CUBIC runs through Intel IPP, whose
    fixed-point rounding a device kernel would not reproduce (measured: 4-7%
    of the pixels one level off)."""
    import torch

    h, w = int(chw.shape[1]), int(chw.shape[2])
    if not shrinks_only(h, w, g):
        raise ValueError(f"fit_tensor shrinks only: {h}x{w} -> {g}")
    nh, nw = _target(h, w, g)
    x = chw
    if (nh, nw) != (h, w):
        wh = torch.from_numpy(area_weights(h, nh)).to(chw.device)
        ww = torch.from_numpy(area_weights(w, nw)).to(chw.device)
        y = wh @ (chw.float() @ ww.T)  # rows first, as OpenCV sums them
        if h % nh == 0 and w % nw == 0:  # OpenCV's integer-factor path rounds halves up
            y = torch.floor(y + 0.5)
        x = y.round_().clamp_(0, 255).to(torch.uint8)
    if g.fit == "crop":
        top, left = (nh - g.size) // 2, (nw - g.size) // 2
        x = x[:, top : top + g.size, left : left + g.size]
    return x.permute(1, 2, 0).contiguous()


def unit_rows(v: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``v`` as float32 rows of length 1 (zero rows stay zero)."""
    a = np.asarray(v, np.float32)
    a = a.reshape(1, -1) if a.ndim == 1 else a
    out: npt.NDArray[np.float32] = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return out


class Embedder(Signal):
    """A signal that maps images to unit-length float32 vectors in batches.

    Subclasses set :attr:`geometry` and implement :meth:`prepare` and
    :meth:`forward` only (see the module docstring).
    """

    dtype = np.dtype(np.float32)
    metric = "cosine"
    #: False for an embedder whose vectors are computed in another process
    #: (:class:`matching.signals.clip.RemoteEmbedder`): callers must hand it vectors, not images.
    loads_model = True
    #: Images per :meth:`forward` call in :meth:`embed`.
    batch_size: int = 32
    #: Where :meth:`forward` runs ("cpu", "cuda", ...).
    device: str = "cpu"
    #: True where :meth:`forward` takes host arrays anyway (a model run by
    #: ONNX Runtime on the CPU): the batch path then resizes on the host with
    #: :func:`fit_rgb`, exactly as :meth:`prepare`, instead of on a device.
    host_resize: bool = False
    geometry: Geometry

    @abstractmethod
    def prepare(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """One uint8 HWC RGB image -> the model's uint8 HWC input (CPU, per image)."""

    @abstractmethod
    def forward(self, prepared: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """One batch of :meth:`prepare` outputs -> ``(n, dim)`` unit float32 rows."""

    def forward_tensor(self, nhwc: Any) -> npt.NDArray[np.float32]:
        """One batch already on a device: a uint8 ``(n, H, W, 3)`` torch tensor
        (what :func:`fit_tensor` gives, stacked). The default copies it to the
        host and calls :meth:`forward`; an embedder whose model runs in torch
        overrides this to stay on the device."""
        return self.forward(list(nhwc.cpu().numpy()))

    def embed(self, images: Sequence[ImageLike]) -> npt.NDArray[np.float32]:
        """``(len(images), dim)`` float32, each row L2-normalised."""
        dim = self.shape[0]
        out = np.empty((len(images), dim), dtype=np.float32)
        step = max(1, self.batch_size)
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            v = self.forward([self.prepare(as_rgb(im)) for im in chunk])
            if v.shape != (len(chunk), dim):  # pragma: no cover - a broken subclass
                raise RuntimeError(f"{self.name}: forward gave {v.shape} for {len(chunk)} images")
            out[start : start + len(chunk)] = v
        return out

    def _compute(self, probe: Probe) -> Feature:
        return self._compute_batch([probe])[0]

    def _compute_batch(self, probes: Sequence[Probe]) -> list[Feature]:
        vecs = self.embed([p.image for p in probes])
        return [Feature(np.ascontiguousarray(v)) for v in vecs]
