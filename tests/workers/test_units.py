"""Fast tests of the worker building blocks: the micro-batcher, the batched
CLIP path on the CPU, delivery counting, prefetch and routing config."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from config.settings import ConfigError, Settings
from workers.app import celery_config, worker_prefetch
from workers.batching import MicroBatcher, preprocess_rgb
from workers.deliveries import FolderDeliveryCounter, RedisDeliveryCounter


def test_batcher_closes_batches_by_size() -> None:
    seen: list[int] = []

    def forward(items: list[int]) -> list[int]:
        seen.append(len(items))
        return [i * 2 for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(forward, max_batch=4, max_wait_s=5.0)
    futs = [b.submit(i) for i in range(8)]
    assert [f.result(timeout=2) for f in futs] == [i * 2 for i in range(8)]
    assert seen == [4, 4]  # never waited for the 5 s window: both batches were full
    b.close()


def test_batcher_closes_batches_by_time_window() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch=64, max_wait_s=0.05)
    t0 = time.monotonic()
    assert b(7, 2) == 7
    assert time.monotonic() - t0 < 1.0
    assert b.stats.sizes == [1]
    b.close()


def test_batcher_gathers_concurrent_callers_and_propagates_errors() -> None:
    def forward(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad batch")
        return items

    b: MicroBatcher[int, int] = MicroBatcher(forward, max_batch=16, max_wait_s=0.3)
    out: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, b(i, 5))) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: i for i in range(10)}
    assert b.stats.batches <= 2 and sum(b.stats.sizes) == 10
    with pytest.raises(ValueError, match="bad batch"):
        b(-1, 5)
    assert b(3, 5) == 3  # the batcher survives a failed batch
    b.close()


def test_preprocess_is_clip_resize_and_centre_crop() -> None:
    rgb = np.zeros((300, 600, 3), np.uint8)
    rgb[:, 150:450] = 255  # the centre square is white
    out = preprocess_rgb(rgb, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out[:, 10:-10].min() == 255


def test_folder_delivery_counter(tmp_path: Path) -> None:
    c = FolderDeliveryCounter(tmp_path / "d")
    assert [c.incr("task-1:0") for _ in range(3)] == [1, 2, 3]
    assert c.incr("task-1:1") == 1
    c.forget("task-1:0")
    assert c.incr("task-1:0") == 1


@pytest.mark.redis
def test_redis_delivery_counter(redis_url: str) -> None:
    c = RedisDeliveryCounter(redis_url)
    assert [c.incr("t:0") for _ in range(3)] == [1, 2, 3]
    c.forget("t:0")
    assert c.incr("t:0") == 1


def test_prefetch_is_the_smallest_among_a_workers_queues() -> None:
    s = Settings()
    assert worker_prefetch(s, ["fetch", "notify"]) == 4
    assert worker_prefetch(s, ["crawl", "fetch", "analyse", "notify"]) == 1
    assert worker_prefetch(s, ["embed"]) == 1


def test_routes_come_from_config_and_unknown_queues_are_refused() -> None:
    s = Settings(broker_url="redis://127.0.0.1:6379/0")
    conf = celery_config(s)
    assert conf["task_routes"]["artwatch.embed_upload"] == "embed"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600
    assert conf["broker_transport_options"]["unacked_mutex_expire"] == 300
    short = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0", workers={"visibility_timeout_s": 8}))  # type: ignore[arg-type]
    assert short["broker_transport_options"]["unacked_mutex_expire"] == 30  # a killed sweeper blocks redelivery 30 s
    bad = Settings(broker_url="redis://127.0.0.1:6379/0",
                   workers={"routes": {"artwatch.fetch_upload": "gpu"}})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown queues"):
        celery_config(bad)


@pytest.mark.slow
def test_batched_clip_on_cpu_matches_single_image_forward() -> None:
    """The float32 CPU path: a batch gives the same rows as one image at a time."""
    import io

    import torch

    from workers.batching import BatchedClip
    from workers.demo import painting, photo

    torch.manual_seed(0)
    clip = BatchedClip.load("ViT-B-32", "", device="cpu", max_batch=8, max_wait_s=0.2)
    assert clip.autocast is None  # float32 on the CPU
    datas = []
    for img in (painting(1), photo(2), photo(3)):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=90)
        datas.append(buf.getvalue())
    crops = [clip.prepare(d) for d in datas]
    batched = np.stack(clip.forward(crops))
    single = np.stack([clip.forward([c])[0] for c in crops])
    assert batched.shape == (3, clip.dim) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    out: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda d=d: out.append(clip.embed_bytes(d))) for d in datas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 3 and clip.batcher.stats.batches == 1  # three threads, one forward pass
    clip.close()


def test_reconfiguring_for_another_folder_broker_sends_there(tmp_path: Path) -> None:
    """Two folder brokers share a URL and differ only in their folders: the second
    configuration must not keep publishing into the first one's folder."""
    from config.settings import load_settings
    from workers.app import configure
    from workers.broker import queue_depths

    first = load_settings(data_dir=tmp_path / "a")
    second = load_settings(data_dir=tmp_path / "b")
    for s in (first, second):
        s.data_dir.mkdir(parents=True)
    app = configure(first)
    app.send_task("artwatch.crawl_source", args=[1])
    app = configure(second)
    app.send_task("artwatch.crawl_source", args=[2])
    assert queue_depths(app, second)["crawl"] == 1
    assert queue_depths(app, first)["crawl"] == 1
