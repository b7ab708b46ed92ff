"""WorkVectors: works' CLIP and PDQ vectors in a VectorIndex, queried per upload."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config.settings import MatchingSettings
from matching.decode import decode_image
from matching.index import EmbeddedIndex, point_id
from matching.index.vectors import WorkVectors, vector_specs
from matching.signals import ClipEmbedder


class W:
    def __init__(self, work_id: int, owner_id: int, kind: str = "artwork") -> None:
        self.work_id, self.owner_id, self.kind = work_id, owner_id, kind


def _img(seed: int, fmt: str = "PNG", alpha: bool = False) -> bytes:
    r = np.random.default_rng(seed)
    tiny = Image.fromarray(r.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    a = np.asarray(tiny.resize((256, 192), Image.Resampling.BICUBIC))
    im = Image.fromarray(a)
    if alpha:
        im = im.convert("RGBA")
        px = np.asarray(im).copy()
        px[:40, :, 3] = 0
        im = Image.fromarray(px)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 75} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def embedder() -> ClipEmbedder:
    return ClipEmbedder.from_settings(MatchingSettings(clip_model="ViT-S-32", clip_pretrained="", device="cpu"))


def test_register_search_unregister(tmp_path: Path, embedder: ClipEmbedder) -> None:
    specs = vector_specs(embedder, with_pdq=True)
    assert [s.name for s in specs] == ["clip", "pdq"]
    ix = EmbeddedIndex(tmp_path, specs)
    wv = WorkVectors(ix, embedder, with_pdq=True)
    n = wv.register(W(1, 10), decode_image(_img(1)))
    assert n == 1 + 8  # one rendering, eight PDQ variants
    assert wv.register(W(2, 20, "logo"), decode_image(_img(2, alpha=True))) == 2 + 16
    wv.register(W(3, 10), decode_image(_img(3)))
    assert ix.count() == 9 + 18 + 9
    # Re-registering replaces rather than adds.
    wv.register(W(3, 10), decode_image(_img(3)))
    assert ix.count() == 36

    copy = decode_image(_img(1, "JPEG"))
    cands = wv.candidates(copy)
    assert cands[1]["pdq_distance"] <= 31  # the published PDQ match threshold
    assert cands[1]["clip"] == max(c.get("clip", -1) for c in cands.values())
    assert cands[1]["clip"] > 0.95
    assert set(wv.candidates(copy, owner_ids=[20])) == {2}

    wv.unregister(1)
    assert 1 not in wv.candidates(copy)
    assert ix.search("clip", embedder.embed([copy])[0], 10)[0].id in (point_id(3), point_id(2), point_id(2, 1))
    ix.close()


def test_index_without_the_vector_is_refused(tmp_path: Path, embedder: ClipEmbedder) -> None:
    ix = EmbeddedIndex(tmp_path, vector_specs(None, with_pdq=True))
    with pytest.raises(ValueError, match="no 'clip' vector"):
        WorkVectors(ix, embedder)
    wv = WorkVectors(ix, None, with_pdq=True)
    wv.register(W(5, 1), decode_image(_img(5)))
    assert set(wv.candidates(decode_image(_img(5, "JPEG")))) == {5}
    ix.close()


def test_vector_keys_name_the_model_and_are_checked_per_vector(tmp_path: Path) -> None:
    from matching.errors import IndexError_
    from matching.index.vectors import check_vector_keys, settings_vector_keys
    from storage.documents import VECTOR_KEYS, FolderDocumentStore

    docs = FolderDocumentStore(tmp_path)
    random_clip = settings_vector_keys(MatchingSettings(clip_pretrained="", descriptor=""))
    assert random_clip == {"clip": "ViT-B-32-random"}
    laion = settings_vector_keys(MatchingSettings(clip_pretrained="laion2b_s34b_b79k", descriptor=""))
    assert laion == {"clip": "ViT-B-32-laion2b_s34b_b79k"}
    sscd = settings_vector_keys(MatchingSettings(use_embedder=False))
    assert list(sscd) == ["sscd"]
    assert settings_vector_keys(MatchingSettings(use_embedder=False, descriptor="")) == {}
    check_vector_keys(docs, sscd)  # the first opener records its vectors
    check_vector_keys(docs, {**random_clip, **sscd})  # a vector added later is recorded beside them
    doc = docs.get(VECTOR_KEYS)
    assert doc is not None and json.loads(doc.data) == {**random_clip, **sscd}
    check_vector_keys(docs, random_clip)  # a subset agrees
    with pytest.raises(IndexError_, match="clip: indexed with ViT-B-32-random, these settings ask for ViT-B-32-laion"):
        check_vector_keys(docs, {**laion, **sscd})
    check_vector_keys(docs, laion, claim=True)
    doc = docs.get(VECTOR_KEYS)
    assert doc is not None and json.loads(doc.data) == laion
