"""Batched embedding (CLIP and the SSCD descriptor) for the GPU worker.

The ``embed`` queue is consumed by a worker running Celery's *threads* pool:
each in-flight task is one thread holding one upload. A task thread decodes
and preprocesses its image on the CPU (Pillow and OpenCV release the GIL, so
the threads run in parallel), then hands a small uint8 array to the process's
:class:`MicroBatcher`. One inference thread gathers arrays into a batch, closed
by size (``max_batch``) or by a time window after its first image
(``max_wait_s``), and runs a single forward pass. While the GPU runs batch N
the task threads are already decoding batch N+1, so decode overlaps inference.

On CUDA the forward pass runs under autocast in float16 (or bfloat16); on the
CPU the same path runs in float32. The arrays travel to the device as uint8
(4x less copying than float32) and are normalised there. The model is loaded
once per worker process (:func:`get_clip`), on the device chosen by
``matching.device`` (``auto`` picks CUDA, then MPS, then the CPU).

:class:`BatchedEmbedder` does this for any :class:`matching.signals.Embedder`
(:class:`BatchedClip` is the CLIP one; :func:`get_clip` and
:func:`get_descriptor` give the process's). The per-image CPU step is the
embedder's own ``prepare``, the one works go through at registration, so an
upload's vector and a work's vector come from the same preprocessing.

:func:`bytes_to_vectors` is the throughput path for a batch of images that
are all at hand (back-scans, the benchmark): JPEGs are decoded on the device
in one call (nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``),
everything else (PNG, WebP, CMYK or EXIF-rotated JPEGs, anything nvJPEG
refuses) by the project's decoder on the CPU; resizing (images that need
enlarging, being small, are resized on the host) and the model's
normalisation run on the device, the forward pass in fp16 on CUDA. Without
a GPU the same code runs on the CPU (that is what the tests run).

Nothing here knows about Celery or the database: the embed task calls
:meth:`BatchedClip.embed_bytes` and stores the vector.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from matching.decode import DEFAULT_MAX_PIXELS
from matching.errors import ImageError
from matching.signals.clip import CLIP_MEAN, CLIP_STD, ClipEmbedder, preprocess_rgb
from matching.signals.embedder import Embedder, fit_tensor, shrinks_only

__all__ = ["CLIP_MEAN", "CLIP_STD", "BatchStats", "BatchedClip", "BatchedEmbedder", "FittedBatch", "MicroBatcher",
           "VectorBatch", "bytes_to_vectors", "decode_and_fit", "get_clip", "get_descriptor", "pil_decode",
           "plain_jpeg", "preprocess_rgb", "project_decode"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

@dataclass
class BatchStats:
    """Counters a batcher keeps; read by metrics and the benchmark."""

    batches: int = 0
    items: int = 0
    forward_s: float = 0.0
    sizes: list[int] = field(default_factory=list)


class MicroBatcher(Generic[T, R]):
    """Gathers items submitted from many threads into batches for ``forward``.

    ``forward(items)`` must return one result per item, in order. A batch
    closes when it holds ``max_batch`` items or ``max_wait_s`` after its first
    item arrived. If ``forward`` raises, every item of that batch gets the
    exception (the caller's task then retries or dead-letters it).
    """

    def __init__(self, forward: Callable[[list[T]], Sequence[R]], *, max_batch: int = 32,
                 max_wait_s: float = 0.02, name: str = "batcher",
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self._on_batch = on_batch
        self._q: queue.Queue[tuple[T, Future[R]] | None] = queue.Queue()
        self.stats = BatchStats()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        if self._closed:
            raise RuntimeError("batcher is closed")
        fut: Future[R] = Future()
        self._q.put((item, fut))
        return fut

    def __call__(self, item: T, timeout: float | None = None) -> R:
        return self.submit(item).result(timeout)

    def close(self) -> None:
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout=10)

    def _gather(self) -> tuple[list[tuple[T, Future[R]]], bool]:
        first = self._q.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._q.put(None)  # close after this batch
                break
            batch.append(nxt)
        return batch, False

    def _run(self) -> None:
        while True:
            batch, stop = self._gather()
            if stop:
                return
            items = [b[0] for b in batch]
            t0 = time.perf_counter()
            try:
                results = list(self._forward(items))
                if len(results) != len(items):
                    raise RuntimeError(f"forward returned {len(results)} results for {len(items)} items")
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            dt = time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.forward_s += dt
            self.stats.sizes.append(len(items))
            if self._on_batch is not None:
                try:
                    self._on_batch(len(items), dt)
                except Exception:  # metrics must never break inference
                    log.exception("batch callback failed")
            for (_, fut), res in zip(batch, results, strict=True):
                fut.set_result(res)


def pil_decode(data: bytes, target: int) -> npt.NDArray[np.uint8]:
    """Plain Pillow decode (JPEG draft mode) for machines without the project's
    decoder; the worker uses :func:`matching.decode.decode_image`."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as src:
        src.draft("RGB", (target, target))
        return np.asarray(ImageOps.exif_transpose(src).convert("RGB"))


def project_decode(data: bytes, target: int) -> npt.NDArray[np.uint8]:
    """The project's safe decoder: bombs refused, alpha flattened, first frame."""
    from matching.decode import decode_image

    # Long side 2x the crop keeps the short side >= target for aspect <= 2,
    # and lets JPEG draft mode decode at 1/2, 1/4 or 1/8 scale.
    return np.asarray(decode_image(data, max_side=2 * target).rgb)


class BatchedEmbedder:
    """An :class:`Embedder` behind a :class:`MicroBatcher`.

    ``embed_bytes(data)`` may be called from many threads at once; each call
    decodes and prepares on its own thread and waits for its row of a shared
    forward pass. Rows are L2-normalised float32.
    """

    def __init__(self, embedder: Embedder, *, max_batch: int = 32, max_wait_s: float = 0.02,
                 decode: Callable[[bytes, int], npt.NDArray[np.uint8]] = project_decode,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.embedder = embedder
        try:  # parallelism comes from the task threads: one OpenCV thread each
            import cv2

            cv2.setNumThreads(1)
        except ImportError:
            pass
        self._decode = decode
        self.batcher: MicroBatcher[npt.NDArray[np.uint8], npt.NDArray[np.float32]] = MicroBatcher(
            self.forward, max_batch=max_batch, max_wait_s=max_wait_s, name=f"{embedder.name}-inference",
            on_batch=on_batch)

    @property
    def device(self) -> str:
        return self.embedder.device

    @property
    def image_size(self) -> int:
        """The side of the model's input (the decoder's target)."""
        return self.embedder.geometry.size

    @property
    def autocast(self) -> Any:
        """The autocast dtype of the forward pass, or None for float32."""
        return getattr(self.embedder, "autocast", None)

    @property
    def dim(self) -> int:
        return int(self.embedder.shape[0])

    def prepare(self, data: bytes) -> npt.NDArray[np.uint8]:
        """Decode and prepare on the calling (CPU) thread; raises ImageError for bad bytes."""
        return self.embedder.prepare(self._decode(data, self.image_size))

    def prepare_rgb(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The embedder's input for an image already decoded (a work's rendering)."""
        return self.embedder.prepare(rgb)

    def forward(self, crops: list[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.float32]]:
        """One forward pass over prepared arrays; runs on the inference thread."""
        return list(self.embedder.forward(crops))

    def embed_bytes(self, data: bytes, timeout: float | None = 300.0) -> npt.NDArray[np.float32]:
        return self.batcher(self.prepare(data), timeout)

    def embed_many(self, datas: Sequence[bytes]) -> VectorBatch:
        """A whole batch at once, decoded on the device where it can be (:func:`bytes_to_vectors`)."""
        return bytes_to_vectors(self.embedder, datas, decode=self._decode)

    def close(self) -> None:
        self.batcher.close()


class BatchedClip(BatchedEmbedder):
    """The open_clip image tower behind a :class:`MicroBatcher` (see :class:`BatchedEmbedder`)."""

    def __init__(self, model: Any, *, device: str, dtype: str = "float16", max_batch: int = 32,
                 max_wait_s: float = 0.02, image_size: int | None = None,
                 decode: Callable[[bytes, int], npt.NDArray[np.uint8]] = project_decode,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        embedder = model if isinstance(model, ClipEmbedder) else ClipEmbedder.from_model(
            model, device=device, dtype=dtype, batch_size=max_batch, image_size=image_size)
        self.clip = embedder
        super().__init__(embedder, max_batch=max_batch, max_wait_s=max_wait_s, decode=decode, on_batch=on_batch)

    @classmethod
    def load(cls, model_name: str = "ViT-B-32", pretrained: str = "", *, device: str = "auto",
             dtype: str = "float16", **kwargs: Any) -> BatchedClip:
        emb = ClipEmbedder(model_name, pretrained, device=device, dtype=dtype,
                           batch_size=int(kwargs.get("max_batch", 32)))
        return cls(emb, device=emb.device, dtype=dtype, **kwargs)

    @property
    def model(self) -> Any:
        return self.clip._model


@dataclass
class VectorBatch:
    """What :func:`bytes_to_vectors` gives: one row per input, in order; a row
    whose image could not be decoded is zero and ``errors[i]`` says why."""

    vectors: npt.NDArray[np.float32]
    errors: list[str | None]
    #: How many images took the device decoder (the rest: the CPU decoder).
    device_decoded: int = 0


def plain_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether ``data`` is a JPEG the device decoder can take as it is: RGB or
    grey, no EXIF rotation, not a decompression bomb. Everything else goes to
    the project's CPU decoder (CMYK, rotation, bombs refused with its reason)."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    import io

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                    return False
                if im.width * im.height > max_pixels:
                    return False
                return int(im.getexif().get(0x0112, 1)) == 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # the CPU decoder says why
        return False


@dataclass
class FittedBatch:
    """One chunk after decoding and resizing: the model inputs, on the device,
    grouped by shape (one group unless the geometry keeps aspect ratios)."""

    groups: list[tuple[list[int], Any]]
    errors: dict[int, str]
    device_decoded: int


def decode_and_fit(embedder: Embedder, datas: Sequence[bytes], *, device_decode: bool | None = None,
                   device_resize: bool | None = None,
                   decode: Callable[[bytes, int], npt.NDArray[np.uint8]] = project_decode) -> FittedBatch:
    """The first stage of :func:`bytes_to_vectors` for one chunk (see there)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = embedder.device if embedder.device.startswith("cuda") else "cpu"
    use_device = dev.startswith("cuda") if device_decode is None else device_decode
    resize_on_device = not embedder.host_resize if device_resize is None else device_resize
    geom = embedder.geometry
    frames: dict[int, Any] = {}
    errors: dict[int, str] = {}
    jpegs = [i for i, d in enumerate(datas) if use_device and plain_jpeg(d)]
    if jpegs:
        raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs]
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders for TorchCodec, which is not installed here
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
            try:
                decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=dev)
            except RuntimeError:  # one bad image fails the call: retry them one by one
                decoded = []
                for r in raw:
                    try:
                        decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=dev))
                    except RuntimeError:
                        decoded.append(None)
        frames.update((i, t) for i, t in zip(jpegs, decoded, strict=True) if t is not None)
    on_device = len(frames)
    for i, data in enumerate(datas):
        if i in frames:
            continue
        try:
            rgb = decode(data, geom.size)
        except ImageError as exc:
            errors[i] = str(exc)
            continue
        arr = rgb if rgb.flags.writeable and rgb.flags.c_contiguous else np.array(rgb, order="C")
        frames[i] = torch.from_numpy(arr).permute(2, 0, 1)
    fitted: dict[tuple[int, ...], list[tuple[int, Any]]] = {}
    for i, t in sorted(frames.items()):
        if resize_on_device and shrinks_only(int(t.shape[1]), int(t.shape[2]), geom):
            f = fit_tensor(t.to(dev), geom)
        else:  # on the host, as prepare() does (a small image to enlarge: see fit_tensor)
            f = torch.from_numpy(embedder.prepare(np.ascontiguousarray(t.permute(1, 2, 0).cpu().numpy()))).to(dev)
        fitted.setdefault(tuple(f.shape), []).append((i, f))
    groups = [([i for i, _ in rows], torch.stack([f for _, f in rows])) for rows in fitted.values()]
    return FittedBatch(groups, errors, on_device)


def bytes_to_vectors(embedder: Embedder, datas: Sequence[bytes], *, device_decode: bool | None = None,
                     device_resize: bool | None = None,
                     decode: Callable[[bytes, int], npt.NDArray[np.uint8]] = project_decode,
                     batch_size: int | None = None) -> VectorBatch:
    """Encoded images -> ``(n, dim)`` unit vectors, decoded and resized on the device.

    ``device_decode`` (default: on when the embedder runs on CUDA) sends plain
    JPEGs (:func:`plain_jpeg`) through ``torchvision.io.decode_jpeg`` on the
    embedder's device, in one call per chunk of ``batch_size``; a JPEG it
    refuses, and every other format, is decoded by ``decode`` on the CPU.
    Each image is then shrunk to the embedder's geometry on the device
    (:func:`fit_tensor`; one that needs enlarging goes through the
    embedder's ``prepare`` on the host, and so does every image when
    ``device_resize`` is False, the default for an embedder that says
    ``host_resize``), and each chunk goes through
    :meth:`Embedder.forward_tensor`. The vectors agree with
    :meth:`Embedder.embed` on the same images (cosine > 0.999, the contract
    suite).
    """
    dim = int(embedder.shape[0])
    out = np.zeros((len(datas), dim), np.float32)
    errors: list[str | None] = [None] * len(datas)
    on_device = 0
    step = max(1, batch_size or embedder.batch_size)
    for start in range(0, len(datas), step):
        chunk = decode_and_fit(embedder, datas[start : start + step], device_decode=device_decode,
                               device_resize=device_resize, decode=decode)
        on_device += chunk.device_decoded
        for i, reason in chunk.errors.items():
            errors[start + i] = reason
        for rows, batch in chunk.groups:
            out[[start + i for i in rows]] = embedder.forward_tensor(batch)
    return VectorBatch(out, errors, on_device)


_clip_lock = threading.Lock()
_clip: tuple[int, BatchedClip] | None = None
_descriptor: tuple[int, BatchedEmbedder] | None = None


def _batching(settings: Any) -> dict[str, Any]:
    from workers import metrics

    w = settings.workers
    return {"max_batch": w.embed_max_batch, "max_wait_s": w.embed_max_wait_ms / 1000.0,
            "on_batch": metrics.observe_batch}


def get_clip(settings: Any) -> BatchedClip:
    """This process's :class:`BatchedClip` for ``settings`` (loaded on first use,
    again after a fork: a CUDA context must not cross processes)."""
    global _clip
    with _clip_lock:
        if _clip is None or _clip[0] != os.getpid():
            m = settings.matching
            _clip = (os.getpid(), BatchedClip.load(m.clip_model, m.clip_pretrained, device=m.device,
                                                   dtype=settings.workers.embed_dtype, **_batching(settings)))
        return _clip[1]


def get_descriptor(settings: Any) -> BatchedEmbedder | None:
    """This process's batched SSCD descriptor (``matching.descriptor``), or None
    when none is configured; on ``matching.device`` where ONNX Runtime can
    run there (CUDA provider), else on the CPU. Loaded once per process."""
    global _descriptor
    m = settings.matching
    if not m.descriptor:
        return None
    with _clip_lock:
        if _descriptor is None or _descriptor[0] != os.getpid():
            from matching.signals.sscd import SscdEmbedder, resolve_sscd_device

            # ONNX Runtime without its CUDA provider runs SSCD on the CPU, whatever CLIP uses
            device = m.device if resolve_sscd_device("auto") != "cpu" else "cpu"
            emb = SscdEmbedder(m.descriptor, side=m.descriptor_side, threads=m.descriptor_threads, device=device,
                               batch_size=settings.workers.embed_max_batch)
            _descriptor = (os.getpid(), BatchedEmbedder(emb, **_batching(settings)))
        return _descriptor[1]
