"""The ``Signal`` role: one kind of fingerprint computed from one image.

A subclass declares what its output looks like (``name``, ``dtype``,
``shape``, ``metric``) and implements :meth:`Signal._compute`. The base class
supplies the rest, so every signal behaves the same way:

- :meth:`Signal.compute` returns a :class:`Feature` whose ``vector`` always has
  the declared dtype and shape (checked here, once, for every signal);
- :meth:`Signal.compute_many` batches (the default loops; an embedder
  overrides :meth:`Signal._compute_batch` to run one forward pass);
- :meth:`Signal.distance` / :meth:`Signal.similarity` compare two vectors by
  the declared metric: ``exact`` (0 or 1), ``hamming`` (bits that differ, on
  packed uint8 bit vectors) or ``cosine`` (on L2-normalised float vectors).

Inputs are :class:`Probe` objects: the raw bytes (SHA-256 hashes those) and
the decoded image (everything else uses that), so an image is decoded once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from matching.decode import DecodedImage, decode_image

__all__ = ["Feature", "Metric", "Probe", "Signal", "hamming"]

Metric = Literal["exact", "hamming", "cosine"]


@dataclass(frozen=True)
class Probe:
    """One image as every signal needs it: its bytes and its decoding."""

    data: bytes
    image: DecodedImage

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "", max_side: int | None = 1024) -> Probe:
        return cls(data, decode_image(data, name=name, max_side=max_side))


@dataclass(frozen=True)
class Feature:
    """A signal's output. ``quality`` is in [0, 1]; ``reliable`` is False when
    the signal itself says the vector should not be used to match (e.g. PDQ
    quality below 50)."""

    vector: np.ndarray
    quality: float = 1.0
    reliable: bool = True


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between packed uint8 bit vectors; broadcasts over leading axes."""
    out: np.ndarray = np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)
    return out


class Signal(ABC):
    """Base of every signal; subclasses implement :meth:`_compute` only."""

    name: ClassVar[str]
    dtype: ClassVar[np.dtype[np.generic]]
    metric: ClassVar[Metric]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of every vector this signal returns (an instance property,
        because an embedder's width depends on its model)."""
        return self._shape()

    def _shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @abstractmethod
    def _compute(self, probe: Probe) -> Feature:
        """The signal's value for one image."""

    def _compute_batch(self, probes: Sequence[Probe]) -> list[Feature]:
        return [self._compute(p) for p in probes]

    def compute(self, probe: Probe) -> Feature:
        return self.compute_many([probe])[0]

    def compute_many(self, probes: Sequence[Probe]) -> list[Feature]:
        if not probes:
            return []
        out = self._compute_batch(probes)
        if len(out) != len(probes):  # pragma: no cover - a broken subclass
            raise RuntimeError(f"{self.name}: {len(out)} results for {len(probes)} images")
        return [self._check(f) for f in out]

    def _check(self, f: Feature) -> Feature:
        v = f.vector
        if v.dtype != self.dtype or v.shape != self.shape:
            raise RuntimeError(  # pragma: no cover - a broken subclass
                f"{self.name}: got {v.dtype}{v.shape}, declared {self.dtype}{self.shape}"
            )
        v.setflags(write=False)
        return f

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """0 for identical vectors; larger is further apart (see the module doc)."""
        if self.metric == "exact":
            return 0.0 if np.array_equal(a, b) else 1.0
        if self.metric == "hamming":
            return float(hamming(a, b))
        return float(1.0 - np.dot(a.astype(np.float32), b.astype(np.float32)))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """In [0, 1]; 1 for identical vectors."""
        if self.metric == "exact":
            return 1.0 - self.distance(a, b)
        if self.metric == "hamming":
            return 1.0 - self.distance(a, b) / float(8 * a.shape[-1])
        return float(max(0.0, min(1.0, 1.0 - self.distance(a, b))))
