"""SHA-256 of the file bytes: finds exact re-uploads at no cost."""

from __future__ import annotations

import hashlib

import numpy as np

from matching.signals.base import Feature, Probe, Signal

__all__ = ["Sha256Signal"]


class Sha256Signal(Signal):
    """The 32-byte SHA-256 digest of the raw bytes (not the pixels)."""

    name = "sha256"
    dtype = np.dtype(np.uint8)
    metric = "exact"

    def _shape(self) -> tuple[int, ...]:
        return (32,)

    def _compute(self, probe: Probe) -> Feature:
        return Feature(np.frombuffer(hashlib.sha256(probe.data).digest(), dtype=np.uint8).copy())

    @staticmethod
    def hexdigest(vector: np.ndarray) -> str:
        return bytes(vector).hex()
