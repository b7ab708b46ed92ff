"""open_clip image embeddings (cosine similarity on L2-normalised float32).

The model comes from :class:`config.settings.MatchingSettings`:
``clip_model`` is an open_clip architecture name; ``clip_pretrained`` is an
open_clip pretrained tag, a path to a local checkpoint file, or empty for
random weights (tests: no download, embeddings then carry no meaning).

The device is ``settings.device``: ``auto`` picks CUDA, then MPS, then the CPU.
On CUDA the forward pass runs under fp16 autocast; elsewhere in float32.
:class:`Embedder` itself lives in :mod:`matching.signals.embedder` (imported
from here too, for old imports).
Models are loaded once per process and shared (keyed by model, weights and
device), so every engine in a worker uses one copy. After a fork the child
must not reuse a CUDA model loaded by the parent; the cache is keyed by
process id for that reason.
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

from config.settings import MatchingSettings
from matching.errors import EmbedderError
from matching.signals.embedder import Embedder, Geometry, ImageLike, as_rgb, fit_rgb

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipEmbedder", "Embedder", "ImageLike", "RemoteEmbedder", "build_embedder",
           "clip_dim", "preprocess_rgb", "resolve_device"]

log = logging.getLogger(__name__)

# open_clip's OPENAI_DATASET_MEAN / STD (every ViT-B-32 tag uses them); a model
# whose config names others (preprocess_cfg) uses its own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


CLIP_EXTRA_HINT = ("the CLIP embedder needs the `clip` extra (torch, torchvision, open_clip_torch): "
                   "pip install 'artwatch[clip]', or set matching.use_embedder = false")


def import_clip_stack() -> tuple[Any, Any]:
    """``(torch, open_clip)``, or :class:`EmbedderError` saying which extra installs them.

    The embedded default never embeds, so a plain install leaves torch out
    (it is most of the install's size and start-up time); only code that
    embeds comes here.
    """
    try:
        import open_clip
        import torch
    except ImportError as exc:
        raise EmbedderError(f"{CLIP_EXTRA_HINT} ({exc})") from None
    return torch, open_clip


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` if available, else ``mps``, else ``cpu``; others pass through."""
    torch, _ = import_clip_stack()

    req = (requested or "auto").strip().lower()
    if req != "auto":
        if req.startswith("cuda") and not torch.cuda.is_available():
            raise EmbedderError(f"device {requested!r} requested but CUDA is not available")
        if req == "mps" and not torch.backends.mps.is_available():
            raise EmbedderError("device 'mps' requested but MPS is not available")
        return req
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_lock = threading.Lock()
_models: dict[tuple[int, str, str, str], tuple[Any, Any]] = {}


def _load(model_name: str, pretrained: str, device: str) -> tuple[Any, Any]:
    key = (os.getpid(), model_name, pretrained, device)
    with _lock:
        hit = _models.get(key)
        if hit is not None:
            return hit
        _, open_clip = import_clip_stack()

        weights: str | None = pretrained or None
        looks_like_path = weights and (
            os.sep in weights or weights.endswith((".pt", ".bin", ".safetensors", ".pth"))
        )
        if looks_like_path and not Path(str(weights)).is_file():
            raise EmbedderError(f"CLIP checkpoint not found: {weights}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, device=device
            )
        except Exception as exc:  # open_clip and the hub raise many kinds; all mean "no model"
            hint = ("; open_clip downloads tagged weights on first use: without network access set "
                    "matching.clip_pretrained to a local checkpoint path, or matching.use_embedder = false")
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EmbedderError(
                f"cannot load CLIP model {model_name!r} (pretrained {weights!r}) on {device}: {reason}"
                + (hint if weights and not looks_like_path else "")
            ) from exc
        model.eval()
        log.info("loaded CLIP %s (pretrained=%s) on %s", model_name, weights, device)
        _models[key] = (model, preprocess)
        return model, preprocess


def preprocess_rgb(rgb: npt.NDArray[np.uint8], size: int = 224) -> npt.NDArray[np.uint8]:
    """CLIP's input geometry: short side to ``size``, centre crop, uint8 HWC.

    The normalisation happens on the device, after the uint8 copy (4x less to
    copy than float32); see :meth:`ClipEmbedder.forward_tensor`."""
    return fit_rgb(as_rgb(rgb), Geometry(size, "crop"))


def _image_size(model: Any) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class ClipEmbedder(Embedder):
    """open_clip image tower; see the module docstring for configuration.

    One preprocessing path for works and uploads: :meth:`prepare` is
    :func:`preprocess_rgb` (OpenCV resize with an area filter when shrinking,
    bicubic when enlarging, then the centre crop), the same crop the GPU
    worker batches; the mean/std normalisation runs on the device inside
    :meth:`forward_tensor`. open_clip's own transform (Pillow bicubic, kept as
    ``_preprocess`` for comparisons) gives slightly different pixels, so
    vectors differ slightly from ones computed with it (cosine 0.9999 with
    random weights on the tests' images; not measured with trained weights):
    vectors stored before this change are best recomputed.
    """

    name = "clip"

    def __init__(
        self, model: str = "ViT-B-32", pretrained: str = "", *, device: str = "auto", batch_size: int = 32,
        dtype: str = "float16",
    ) -> None:
        dev = resolve_device(device)
        loaded, preprocess = _load(model, pretrained, dev)
        self._setup(loaded, preprocess, model, pretrained, dev, batch_size, dtype)

    @classmethod
    def from_model(cls, model: Any, *, device: str, dtype: str = "float16", batch_size: int = 32,
                   image_size: int | None = None) -> ClipEmbedder:
        """An embedder around an open_clip model already loaded on ``device``."""
        self = cls.__new__(cls)
        self._setup(model.eval(), None, type(model).__name__, "", device, batch_size, dtype, image_size)
        return self

    def _setup(self, model: Any, preprocess: Any, name: str, pretrained: str, device: str, batch_size: int,
               dtype: str, image_size: int | None = None) -> None:
        import torch

        self.model_name = name
        self.pretrained = pretrained
        self.device = device
        self.batch_size = max(1, batch_size)
        self._model, self._preprocess = model, preprocess
        self._dim = int(model.visual.output_dim)
        self.image_size = int(image_size or _image_size(model))
        self.geometry = Geometry(self.image_size, "crop")
        #: The autocast dtype on CUDA (float16 or bfloat16); None: float32.
        self.autocast: Any = None
        if device.startswith("cuda"):
            self.autocast = torch.bfloat16 if dtype == "bfloat16" else torch.float16
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        mean, std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_settings(cls, settings: MatchingSettings) -> ClipEmbedder:
        return cls(
            settings.clip_model,
            settings.clip_pretrained,
            device=settings.device,
            batch_size=settings.batch_size,
        )

    def _shape(self) -> tuple[int, ...]:
        return (self._dim,)

    def prepare(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        return preprocess_rgb(rgb, self.image_size)

    def forward(self, prepared: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        import torch

        x = torch.from_numpy(np.stack(prepared))
        if self.device.startswith("cuda"):
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self.forward_tensor(x)

    def forward_tensor(self, nhwc: Any) -> npt.NDArray[np.float32]:
        import torch

        x = nhwc.to(self.device)
        x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(device_type="cuda", dtype=self.autocast):
                    feats = self._model.encode_image(x)
            else:
                feats = self._model.encode_image(x)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        out: npt.NDArray[np.float32] = feats.cpu().numpy().astype(np.float32, copy=False)
        return out


def clip_model_key(model_name: str, pretrained: str | None) -> str:
    """Names what a CLIP vector depends on: the model and its weights (``random`` without)."""
    tag = pretrained or "random"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model_name}-{tag}")


def clip_dim(model_name: str) -> int:
    """The embedding width of an open_clip architecture, read from open_clip's
    model config file without importing open_clip (which imports torch)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        cfg = Path(folder) / "model_configs" / f"{model_name}.json"
        if cfg.is_file():
            return int(json.loads(cfg.read_text(encoding="utf-8"))["embed_dim"])
    import open_clip  # a model registered at run time: ask open_clip itself

    found = open_clip.get_model_config(model_name)
    if not found:
        raise EmbedderError(f"unknown CLIP model {model_name!r}")
    return int(found["embed_dim"])


class RemoteEmbedder(Embedder):
    """The CLIP signal of a process that loads no model (``workers.embed_stage``).

    It knows the vectors' width, so the index can be opened and searched with
    vectors computed elsewhere (the GPU workers), and refuses to embed.
    """

    name = "clip"
    loads_model = False

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "") -> None:
        self.model_name = model
        self.pretrained = pretrained
        self._dim = clip_dim(model)

    def _shape(self) -> tuple[int, ...]:
        return (self._dim,)

    def prepare(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        raise EmbedderError(_REMOTE)

    def forward(self, prepared: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        raise EmbedderError(_REMOTE)


_REMOTE = ("this process loads no CLIP model (workers.embed_stage is on): "
           "embeddings come from the GPU workers on queue 'embed'")


def _rgb(im: ImageLike) -> npt.NDArray[np.uint8]:
    """Kept for old imports; see :func:`matching.signals.embedder.as_rgb`."""
    return as_rgb(im)


def build_embedder(settings: MatchingSettings, *, remote: bool = False) -> Embedder | None:
    """The configured embedder, or None when ``use_embedder`` is off; ``remote``
    (``workers.embed_stage``) gives one that loads no model."""
    if not settings.use_embedder:
        return None
    if remote:
        return RemoteEmbedder(settings.clip_model, settings.clip_pretrained)
    return ClipEmbedder.from_settings(settings)
