"""The engine's dihedral PDQ variants are the hashes of the transformed images.

pdqhash 0.2.8's compute_dihedral derives rotations from the DCT and lands far
from the rotated image's own hash; the engine must not rely on it.
"""

from __future__ import annotations

import numpy as np
import pytest

from matching.engine import _pdq_bits
from matching.signals.pdq import DIHEDRAL

from .conftest import smooth_image


@pytest.mark.parametrize("name", list(DIHEDRAL))
def test_each_dihedral_variant_matches_the_transformed_image(name: str) -> None:
    rgb = smooth_image(7, 320, 240)
    variants, quality = _pdq_bits(rgb, dihedral=True)
    assert quality >= 50 and variants.shape == (8, 32)
    seen, _ = _pdq_bits(np.ascontiguousarray(DIHEDRAL[name](rgb)), dihedral=False)
    best = min(int(np.unpackbits(v ^ seen[0]).sum()) for v in variants)
    assert best <= 4, (name, best)
