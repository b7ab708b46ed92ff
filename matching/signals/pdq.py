"""PDQ perceptual hash (Meta's ``pdqhash`` binding) with its dihedral variants.

A hash is 256 bits packed MSB-first into 32 uint8 (the hex of those bytes is
the conventional PDQ hex string). Distance is Hamming; the published match
threshold is 31 bits, and hashes of quality below 50 (of 100) are too
unreliable to match on, so their ``Feature.reliable`` is False.

Registered works are stored as their eight dihedral variants (rotations by
90 degrees, with and without mirroring), so a flipped or rotated copy is one
ordinary hash lookup away. For images with transparency, the variants of the
black-flattened rendering are added too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pdqhash

from matching.decode import DecodedImage
from matching.signals.base import Feature, Probe, Signal

__all__ = ["DIHEDRAL", "MATCH_THRESHOLD", "QUALITY_THRESHOLD", "PdqSignal", "pdq_hex"]

#: Hamming distance (of 256 bits) at or below which two hashes match.
MATCH_THRESHOLD = 31
#: Quality (0-100) below which a hash is not used to match.
QUALITY_THRESHOLD = 50


def pdq_hex(vector: np.ndarray) -> str:
    return bytes(vector).hex()


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(bits, dtype=np.uint8))


class PdqSignal(Signal):
    """PDQ of the white-flattened image; see :meth:`dihedral` for registration."""

    name = "pdq"
    dtype = np.dtype(np.uint8)
    metric = "hamming"

    def _shape(self) -> tuple[int, ...]:
        return (32,)

    def _compute(self, probe: Probe) -> Feature:
        return self.hash_rgb(probe.image.rgb)

    def compute_image(self, image: DecodedImage) -> Feature:
        """PDQ of a decoded image (no bytes needed)."""
        return self._check(self.hash_rgb(image.rgb))

    @staticmethod
    def hash_rgb(rgb: np.ndarray) -> Feature:
        bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
        return Feature(_pack(bits), quality / 100.0, quality >= QUALITY_THRESHOLD)

    def dihedral(self, image: DecodedImage) -> list[Feature]:
        """The eight dihedral variants of each flattened rendering (8 or 16 features).

        Order per rendering (see :data:`DIHEDRAL`): original, rot90 (counter-
        clockwise), rot180, rot270, mirror left-right, mirror top-bottom,
        transpose, anti-transpose.
        """
        out: list[Feature] = []
        for rgb in image.variants():
            out.extend(self._check(f) for f in self.dihedral_rgb(rgb))
        return out

    @classmethod
    def dihedral_rgb(cls, rgb: np.ndarray) -> list[Feature]:
        # Each variant is hashed from transformed pixels. pdqhash 0.2.8's
        # compute_dihedral derives them from the DCT instead and lands 64-92
        # bits away from the hash of the actually rotated image (checked
        # against python-threatexchange's published rotations of LA.png).
        return [cls.hash_rgb(np.ascontiguousarray(t(rgb))) for t in DIHEDRAL.values()]


DIHEDRAL: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flip_lr": lambda a: a[:, ::-1],
    "flip_ud": lambda a: a[::-1],
    "transpose": lambda a: a.transpose(1, 0, 2),
    "antitranspose": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
}
