"""The CLIP embedder on a CUDA device: automatic device choice, fp16 forward
pass, float32 unit vectors, batching that does not change the result.

These run only where PyTorch sees a GPU (CI has none; they were run on a
lent H100/H200, see docs/benchmarks.md "GPU"). Random weights
(``pretrained=""``), the production architecture ViT-B-32.
"""

from __future__ import annotations

import numpy as np
import pytest

from matching.decode import DecodedImage, decode_image
from matching.signals import ClipEmbedder, resolve_device

from .conftest import encode, smooth_image

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to PyTorch")


@pytest.fixture(scope="module")
def emb() -> ClipEmbedder:
    return ClipEmbedder("ViT-B-32", "", device="auto", batch_size=3)


def _images(n: int) -> list[DecodedImage]:
    return [decode_image(encode(smooth_image(i, 320 + 16 * i, 240))) for i in range(n)]


def test_auto_picks_cuda_and_the_model_lives_there(emb: ClipEmbedder) -> None:
    assert resolve_device("auto") == "cuda"
    assert emb.device == "cuda"
    assert {p.device.type for p in emb._model.parameters()} == {"cuda"}


def test_forward_pass_runs_in_fp16_and_returns_float32_unit_vectors(emb: ClipEmbedder) -> None:
    seen: list[object] = []  # torch.dtype; torch is imported at run time only
    hook = emb._model.visual.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        v = emb.embed(_images(4))
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float16}
    assert v.shape == (4, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_fp16_agrees_with_fp32_on_the_same_weights(emb: ClipEmbedder) -> None:
    from PIL import Image

    imgs = _images(5)
    v16 = emb.embed(imgs)
    batch = torch.stack([emb._preprocess(Image.fromarray(im.rgb)) for im in imgs]).to("cuda")
    with torch.inference_mode():
        v32 = emb._model.encode_image(batch).float().cpu().numpy()
    v32 /= np.linalg.norm(v32, axis=1, keepdims=True)
    cos = (v16 * v32).sum(axis=1)
    assert cos.min() > 0.99, cos


def test_batches_of_three_give_what_single_images_give(emb: ClipEmbedder) -> None:
    imgs = _images(7)  # batches of 3, 3, 1
    together = emb.embed(imgs)
    alone = np.concatenate([emb.embed([im]) for im in imgs])
    assert (together * alone).sum(axis=1).min() > 0.999
    # and different images stay apart
    assert float(together[0] @ together[1]) < 0.999
