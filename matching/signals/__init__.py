"""Signals: one fingerprint kind each, all behind :class:`Signal`.

- :class:`Sha256Signal`: exact bytes.
- :class:`PdqSignal`: PDQ perceptual hash, dihedral variants for registration.
- :class:`Embedder` (:mod:`matching.signals.embedder`): the role every image
  embedding shares (prepare per image, forward per batch);
- :class:`ClipEmbedder`: open_clip embedding (torch is imported only when one
  is built); :class:`matching.signals.sscd.SscdEmbedder`: the SSCD
  copy-detection descriptor (ONNX Runtime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matching.signals.base import Feature, Metric, Probe, Signal, hamming
from matching.signals.embedder import Embedder
from matching.signals.pdq import MATCH_THRESHOLD, QUALITY_THRESHOLD, PdqSignal, pdq_hex
from matching.signals.sha256 import Sha256Signal

if TYPE_CHECKING:
    from matching.signals.clip import ClipEmbedder, build_embedder, resolve_device

__all__ = [
    "MATCH_THRESHOLD",
    "QUALITY_THRESHOLD",
    "ClipEmbedder",
    "Embedder",
    "Feature",
    "Metric",
    "PdqSignal",
    "Probe",
    "Sha256Signal",
    "Signal",
    "build_embedder",
    "hamming",
    "pdq_hex",
    "resolve_device",
]

_CLIP = {"ClipEmbedder", "build_embedder", "resolve_device"}


def __getattr__(name: str) -> Any:
    if name in _CLIP:
        from matching.signals import clip

        return getattr(clip, name)
    raise AttributeError(f"module 'matching.signals' has no attribute {name!r}")
