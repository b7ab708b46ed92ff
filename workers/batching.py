"""Batched CLIP embedding for the GPU worker.

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

Nothing here knows about Celery or the database: the embed task calls
:meth:`BatchedClip.embed_bytes` and stores the vector.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from matching.signals.clip import import_clip_stack, resolve_device

__all__ = ["BatchStats", "BatchedClip", "MicroBatcher", "get_clip", "pil_decode", "preprocess_rgb"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# open_clip's OPENAI_DATASET_MEAN / STD (every ViT-B-32 tag uses them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


def preprocess_rgb(rgb: npt.NDArray[np.uint8], size: int = 224) -> npt.NDArray[np.uint8]:
    """CLIP's resize (short side to ``size``, bicubic) and centre crop, as uint8 HWC.

    Normalisation happens on the device, after the uint8 copy."""
    h, w = rgb.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    try:
        import cv2
    except ImportError:  # a bare benchmark machine: Pillow also releases the GIL
        from PIL import Image

        img = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=2.0))
    else:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        img = cv2.resize(np.ascontiguousarray(rgb), (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(img[top:top + size, left:left + size])


class BatchedClip:
    """An open_clip image tower behind a :class:`MicroBatcher`.

    ``embed_bytes(data)`` may be called from many threads at once; each call
    decodes on its own thread and waits for its row of a shared forward pass.
    Rows are L2-normalised float32.
    """

    def __init__(self, model: Any, *, device: str, dtype: str = "float16", max_batch: int = 32,
                 max_wait_s: float = 0.02, image_size: int = 224,
                 decode: Callable[[bytes, int], npt.NDArray[np.uint8]] = project_decode,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        import torch

        self.model = model.eval()
        self.device = device
        try:  # parallelism comes from the task threads: one OpenCV thread each
            import cv2

            cv2.setNumThreads(1)
        except ImportError:
            pass
        self.image_size = image_size
        self._decode = decode
        self.autocast: Any = None
        if device.startswith("cuda"):
            self.autocast = torch.float16 if dtype == "float16" else torch.bfloat16
        self._mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1) * 255.0
        self.batcher: MicroBatcher[npt.NDArray[np.uint8], npt.NDArray[np.float32]] = MicroBatcher(
            self.forward, max_batch=max_batch, max_wait_s=max_wait_s, name="clip-inference", on_batch=on_batch)

    @classmethod
    def load(cls, model_name: str = "ViT-B-32", pretrained: str = "", *, device: str = "auto",
             **kwargs: Any) -> BatchedClip:
        _, open_clip = import_clip_stack()
        dev = resolve_device(device)
        model = open_clip.create_model(model_name, pretrained=pretrained or None, device=dev)
        size = model.visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        log.info("loaded CLIP %s (pretrained=%s) on %s", model_name, pretrained or None, dev)
        return cls(model, device=dev, image_size=size, **kwargs)

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)

    def prepare(self, data: bytes) -> npt.NDArray[np.uint8]:
        """Decode and crop on the calling (CPU) thread; raises ImageError for bad bytes."""
        return preprocess_rgb(self._decode(data, self.image_size), self.image_size)

    def forward(self, crops: list[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.float32]]:
        """One forward pass over uint8 HWC crops; runs on the inference thread."""
        import torch

        x = torch.from_numpy(np.stack(crops))
        x = (
            x.pin_memory().to(self.device, non_blocking=True)
            if self.device.startswith("cuda")
            else x.to(self.device)
        )
        x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(device_type="cuda", dtype=self.autocast):
                    feats = self.model.encode_image(x)
            else:
                feats = self.model.encode_image(x)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        out = feats.cpu().numpy().astype(np.float32, copy=False)
        return list(out)

    def embed_bytes(self, data: bytes, timeout: float | None = 300.0) -> npt.NDArray[np.float32]:
        return self.batcher(self.prepare(data), timeout)

    def close(self) -> None:
        self.batcher.close()


_clip_lock = threading.Lock()
_clip: tuple[int, BatchedClip] | None = None


def get_clip(settings: Any) -> BatchedClip:
    """This process's :class:`BatchedClip` for ``settings`` (loaded on first use,
    again after a fork: a CUDA context must not cross processes)."""
    global _clip
    with _clip_lock:
        if _clip is None or _clip[0] != os.getpid():
            from workers import metrics

            m, w = settings.matching, settings.workers
            _clip = (os.getpid(), BatchedClip.load(
                m.clip_model, m.clip_pretrained, device=m.device, dtype=w.embed_dtype,
                max_batch=w.embed_max_batch, max_wait_s=w.embed_max_wait_ms / 1000.0,
                on_batch=metrics.observe_batch))
        return _clip[1]
