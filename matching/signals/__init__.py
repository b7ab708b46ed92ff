"""Signals: one fingerprint kind each, all behind :class:`Signal`.

- :class:`Sha256Signal`: exact bytes.
- :class:`PdqSignal`: PDQ perceptual hash, dihedral variants for registration.
- :class:`ClipEmbedder`: open_clip embedding (torch is imported only when one
  is built).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matching.signals.base import Feature, Metric, Probe, Signal, hamming
from matching.signals.pdq import MATCH_THRESHOLD, QUALITY_THRESHOLD, PdqSignal, pdq_hex
from matching.signals.sha256 import Sha256Signal

if TYPE_CHECKING:
    from matching.signals.clip import ClipEmbedder, Embedder, build_embedder, resolve_device

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

_CLIP = {"ClipEmbedder", "Embedder", "build_embedder", "resolve_device"}


def __getattr__(name: str) -> Any:
    if name in _CLIP:
        from matching.signals import clip

        return getattr(clip, name)
    raise AttributeError(f"module 'matching.signals' has no attribute {name!r}")
