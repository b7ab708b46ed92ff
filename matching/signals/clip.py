"""open_clip image embeddings (cosine similarity on L2-normalised float32).

The model comes from :class:`config.settings.MatchingSettings`:
``clip_model`` is an open_clip architecture name; ``clip_pretrained`` is an
open_clip pretrained tag, a path to a local checkpoint file, or empty for
random weights (tests: no download, embeddings then carry no meaning).

The device is ``settings.device``: ``auto`` picks CUDA, then MPS, then the CPU.
On CUDA the forward pass runs under fp16 autocast; elsewhere in float32.
Models are loaded once per process and shared (keyed by model, weights and
device), so every engine in a worker uses one copy. After a fork the child
must not reuse a CUDA model loaded by the parent; the cache is keyed by
process id for that reason.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from config.settings import MatchingSettings
from matching.decode import DecodedImage
from matching.errors import EmbedderError
from matching.signals.base import Feature, Probe, Signal

__all__ = ["ClipEmbedder", "Embedder", "RemoteEmbedder", "build_embedder", "clip_dim", "resolve_device"]

log = logging.getLogger(__name__)

ImageLike = DecodedImage | np.ndarray


class Embedder(Signal):
    """A signal that maps images to unit-length float32 vectors in batches.

    Subclasses implement :meth:`embed` only.
    """

    dtype = np.dtype(np.float32)
    metric = "cosine"
    #: False for an embedder whose vectors are computed in another process
    #: (:class:`RemoteEmbedder`): callers must hand it vectors, not images.
    loads_model = True

    @abstractmethod
    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """``(len(images), dim)`` float32, each row L2-normalised."""

    def _compute(self, probe: Probe) -> Feature:
        return self._compute_batch([probe])[0]

    def _compute_batch(self, probes: Sequence[Probe]) -> list[Feature]:
        vecs = self.embed([p.image for p in probes])
        return [Feature(np.ascontiguousarray(v)) for v in vecs]


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


class ClipEmbedder(Embedder):
    """open_clip image tower; see the module docstring for configuration."""

    name = "clip"

    def __init__(
        self, model: str = "ViT-B-32", pretrained: str = "", *, device: str = "auto", batch_size: int = 32
    ) -> None:
        self.model_name = model
        self.pretrained = pretrained
        self.device = resolve_device(device)
        self.batch_size = max(1, batch_size)
        self._model, self._preprocess = _load(model, pretrained, self.device)
        self._dim = int(self._model.visual.output_dim)

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

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        import torch

        out = np.empty((len(images), self._dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack(
                [self._preprocess(Image.fromarray(_rgb(im))) for im in chunk]
            ).to(self.device)
            with torch.inference_mode():
                if self.device.startswith("cuda"):
                    with torch.autocast(device_type="cuda", dtype=torch.float16):
                        feats = self._model.encode_image(batch)
                else:
                    feats = self._model.encode_image(batch)
            v = feats.float().cpu().numpy()
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            out[start : start + len(chunk)] = v / np.maximum(norms, 1e-12)
        return out


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

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        raise EmbedderError("this process loads no CLIP model (workers.embed_stage is on): "
                            "embeddings come from the GPU workers on queue 'embed'")


def _rgb(im: ImageLike) -> np.ndarray:
    return im.rgb if isinstance(im, DecodedImage) else im


def build_embedder(settings: MatchingSettings, *, remote: bool = False) -> Embedder | None:
    """The configured embedder, or None when ``use_embedder`` is off; ``remote``
    (``workers.embed_stage``) gives one that loads no model."""
    if not settings.use_embedder:
        return None
    if remote:
        return RemoteEmbedder(settings.clip_model, settings.clip_pretrained)
    return ClipEmbedder.from_settings(settings)
