"""Fault tests: real Redis, real `artwatch worker` processes, a real site.

Each ends with :meth:`Pipeline.assert_end_state`: every upload analysed (or
failed with a reason), exactly one match per (work, URL) that copies the
work, none for the unrelated photos, at most one notice per (work, URL).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest

from storage.models import DeadLetter, UploadStatus
from workers.demo import photo

from .conftest import Pipeline, RedisServer, free_port, jpeg, wait_for

pytestmark = [pytest.mark.slow]

MakePipeline = Callable[..., Pipeline]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def _unacked(url: str) -> list[dict[str, object]]:
    """Messages delivered to some worker and not yet acked (kombu's hash)."""
    import redis

    r = redis.Redis.from_url(url)
    out = []
    for raw in r.hvals("unacked"):
        msg, _exchange, routing_key = json.loads(raw)
        out.append({"task": msg["headers"]["task"], "id": msg["headers"]["id"], "queue": routing_key,
                    "args": msg["headers"].get("argsrepr")})
    return out


@pytest.mark.redis
def test_sigkill_gpu_worker_mid_batch(make_pipeline: MakePipeline, redis_url: str) -> None:
    """The embed worker is SIGKILLed while it holds a batch; a standby GPU
    worker takes the embed queue over, gets the killed worker's messages back
    after the visibility timeout, and nothing is lost or doubled."""
    p = make_pipeline(redis_url, copies=2, others=6, env={
        "ARTWATCH_WORKERS__EMBED_STAGE": "true",
        "ARTWATCH_MATCHING__DEVICE": "cpu",
        # A long window so the kill lands while the batch is being gathered.
        "ARTWATCH_WORKERS__EMBED_MAX_WAIT_MS": "1500",
        "ARTWATCH_WORKERS__EMBED_MAX_BATCH": "16",
        # The kill can also land between the worker's BRPOP of a message and
        # its write of that message to kombu's unacked hash (or while the reply
        # still sits in its socket): that message is gone from Redis, and only
        # the stalled-upload sweep (workers.stalled) brings the upload back.
        "ARTWATCH_WORKERS__STALL_AFTER_S": "30",
        "ARTWATCH_WORKERS__MAX_REDISPATCHES": "50",
    })
    p.start_worker("--role", "cpu", "-c", "2", name="cpu")
    gpu = p.start_worker("--role", "gpu", "-c", "16", name="gpu1")
    # The standby loads its model now (importing torch takes a while on a
    # busy 2-core machine) but consumes a queue nobody uses until told.
    p.start_worker("--role", "gpu", "-c", "16", "-Q", "standby", name="gpu2")
    p.crawl()
    held = wait_for(lambda: [m for m in _unacked(redis_url) if m["queue"] == "embed"], 150,
                    "the GPU worker to hold embed messages")  # torch import: slow on a busy machine
    gpu.send_signal(signal.SIGKILL)
    gpu.wait()
    assert held, "nothing was in flight on the GPU worker"
    from workers.app import app

    wait_for(lambda: "gpu2@" in p.log("gpu2") and " ready." in p.log("gpu2"), 90, "the standby to be ready")
    replies = app.control.add_consumer("embed", destination=[f"gpu2@{socket.gethostname()}"], reply=True,
                                       timeout=5)
    assert replies, "the standby did not answer"
    # The killed worker's messages come back after the visibility timeout and
    # the standby's next restore pass (whose mutex a worker killed mid-sweep
    # holds for up to 30 s here, see workers.app); on a slow 2-core machine
    # under the full suite that plus the analysis can exceed 60 s. The beat's
    # sweep runs meanwhile, as in a deployment (every 10 minutes there).
    p.wait_settled(8, timeout=180, sweep_every=5)
    p.assert_end_state()
    # The replacement really did the killed worker's work (the embeddings
    # travel in the analyse_upload messages, so the log is where it shows).
    log = p.log("gpu2")
    for m in held:
        assert f"artwatch.embed_upload[{m['id']}] succeeded" in log, m
    # (drafting and alerts belong to other packages; the pipeline's own
    # stages must not have dead-lettered anything)
    ours = [d for d in p.dead_letters() if d.task not in ("artwatch.draft_notice", "artwatch.notify_owner")]
    assert not ours, [(d.task, d.error) for d in ours]


def test_redis_restart_during_run(make_pipeline: MakePipeline, tmp_path: Path) -> None:
    """Our own redis-server (AOF, as in compose) is SIGKILLed and restarted
    while uploads are being analysed; the run completes with nothing lost."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        p = make_pipeline(server.url, copies=2, others=6)
        p.start_worker("--role", "cpu", "-c", "2", name="cpu")
        p.crawl()
        wait_for(lambda: any(u.status != UploadStatus.PENDING or u.blob_sha256 for u in p.uploads()), 40,
                 "the first upload to be fetched")
        server.kill()
        time.sleep(2.0)
        server.start()
        p.wait_settled(8, timeout=60)
        p.assert_end_state()
        assert all(w.poll() is None for w in p.workers), "a worker exited when Redis went away"
    finally:
        server.kill()


@pytest.mark.redis
def test_poison_image_queue_keeps_flowing(make_pipeline: MakePipeline, redis_url: str) -> None:
    """Undecodable images fail with a clear reason and the rest is analysed;
    a message that kills its worker every time is dead-lettered after
    workers.max_deliveries tries. Metrics are scraped from the worker."""
    garbage = b"\xff\xd8\xff\xe0" + os.urandom(4000)
    truncated = jpeg(photo(99), 90)[:1500]
    p = make_pipeline(redis_url, copies=1, others=2,
                      env={"ARTWATCH_WORKERS__MAX_DELIVERIES": "2", "ARTWATCH_LOG_FORMAT": "json"},
                      extra_posts=[(garbage, "image/jpeg"), (truncated, "image/jpeg")])
    port = free_port()
    cpu = p.start_worker("--role", "cpu", "-c", "1", "--metrics-port", str(port), name="cpu")
    p.crawl()
    p.wait_settled(5, timeout=60)
    poison_urls = {u.image_url for u in p.uploads() if u.image_url not in p.copies and u.author.startswith("troll")}
    # The uploads were created from records; authors are kept on the row.
    assert len(poison_urls) == 2, [(u.image_url, u.author) for u in p.uploads()]
    p.assert_end_state(failed=poison_urls)
    for u in p.uploads():
        if u.image_url in poison_urls:
            assert u.image_url in (u.error or "") and any(
                w in (u.error or "").lower() for w in ("corrupt", "truncated", "cannot", "not")), u.error

    # A message that kills its worker on every delivery (in production: a
    # decoder crash, the OOM killer). Its image URL hangs, and the test
    # SIGKILLs the prefork child each time the task has started (its delivery
    # count went up); after workers.max_deliveries = 2 deliveries the third
    # is dead-lettered instead of run, and the queue keeps flowing.
    import redis

    from storage.db import session_scope
    from storage.models import Upload
    from workers import tasks

    with _HangingServer() as hang:
        with session_scope(p.sessions) as s:
            up = Upload(canonical_url=hang.url + "/poison.jpg", image_url=hang.url + "/poison.jpg",
                        host="127.0.0.1", status=UploadStatus.PENDING)
            s.add(up)
            s.flush()
            poison_upload = up.id
        r = redis.Redis.from_url(redis_url)
        poison = tasks.fetch_upload.delay(poison_upload)
        key = f"artwatch:deliveries:{poison.id}:0"

        def poisoned() -> list[DeadLetter]:
            return [d for d in p.dead_letters() if d.task == "artwatch.fetch_upload"]

        kills, seen = 0, 0
        deadline = time.monotonic() + 40
        while not poisoned() and time.monotonic() < deadline:
            n = int(r.get(key) or 0)
            if seen < n <= 2:  # the third delivery is the guard's: let it write the letter
                seen = n
                time.sleep(0.2)
                for child in _children(cpu.pid):
                    os.kill(child, signal.SIGKILL)
                    kills += 1
            time.sleep(0.02)
    dls = poisoned()
    assert len(dls) == 1, [(d.task, d.error) for d in p.dead_letters()]
    assert "poison message" in dls[0].error and dls[0].args == [poison_upload], dls[0].error
    assert kills == 2, kills
    # The queue still flows after the poison message.
    again = tasks.analyse_upload.delay(p.uploads()[0].id)
    wait_for(lambda: int(r.get(f"artwatch:deliveries:{again.id}:0") or 0) == 0 and not any(
        m["id"] == again.id for m in _unacked(redis_url)) and r.llen("analyse") == 0, 30,
        "the next message to be processed")

    body = wait_for(lambda: _scrape(port, 'artwatch_tasks_total{outcome="dead_letter"'), 20,
                    "the dead letter to show in the metrics")
    assert 'artwatch_queue_depth{queue="analyse"}' in body
    assert 'artwatch_stage_seconds_count{stage="fetch_upload"}' in body
    assert 'artwatch_errors_total{kind="poison"}' in body
    matches = [ln for ln in body.splitlines() if ln.startswith("artwatch_matches_total")]
    assert matches and float(matches[0].split()[-1]) >= 1.0, matches

    # `artwatch deadletters list` shows it; replay sends it again, once.
    out = subprocess.run([sys.executable, "-m", "workers", "deadletters", "list"], env=p.env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert "poison message" in out.stdout, out.stdout + out.stderr

    # `artwatch status` reads queue depths and worker liveness from Redis.
    out = subprocess.run([sys.executable, "-m", "workers", "status"], env=p.env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert "queues: crawl 0, fetch 0, analyse 0, embed 0, notify 0" in out.stdout, out.stdout + out.stderr
    assert f"workers: cpu@{socket.gethostname()}" in out.stdout, out.stdout
    assert "dead letters" in out.stdout

    # Structured logs: JSON lines carrying the upload id.
    records = [json.loads(ln) for ln in p.log("cpu").splitlines() if ln.startswith("{")]
    analysed = {u.id for u in p.uploads() if u.status == UploadStatus.ANALYSED}
    logged = {r["upload_id"] for r in records if "upload_id" in r and r["message"].startswith("analysed")}
    assert analysed and analysed <= logged, (analysed, logged)


class _HangingServer:
    """An HTTP server on 127.0.0.1 that never answers in time."""

    def __enter__(self) -> Self:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stop = self._stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stop.wait(60)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def _scrape(port: int, needle: str) -> str | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return None
    return body if needle in body else None


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real file system that really runs out of space."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                         check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (needs root): {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.redis
def test_blob_store_disk_full(make_pipeline: MakePipeline, redis_url: str, tiny_disk: Path) -> None:
    """With the blob store's disk full, fetches fail with a clear error into
    the dead-letter table and leave no row or file half-written; after space
    is freed, `artwatch deadletters replay` finishes the run."""
    p = make_pipeline(redis_url, copies=1, others=2, env={"ARTWATCH_BLOBS__PATH": str(tiny_disk / "blobs")})
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    p.start_worker("--role", "cpu", "-c", "2", name="cpu")
    p.crawl()
    wait_for(lambda: len([d for d in p.dead_letters() if d.task == "artwatch.fetch_upload"]) >= 3, 40,
             "three dead-lettered fetches")
    dls = p.dead_letters()
    dls = [d for d in dls if d.task == "artwatch.fetch_upload"]
    assert len(dls) == 3, [(d.task, d.error) for d in p.dead_letters()]
    assert all("disk is full" in d.error for d in dls), [d.error for d in dls]
    ups = p.uploads()
    assert len(ups) == 3 and all(u.status == UploadStatus.PENDING and u.blob_sha256 is None for u in ups)
    leftovers = [f for f in (tiny_disk / "blobs").rglob("*") if f.is_file()]
    assert leftovers == [], leftovers

    filler.unlink()
    ids = [str(d.id) for d in dls]
    out = subprocess.run([sys.executable, "-m", "workers", "deadletters", "replay", *ids], env=p.env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert "replayed 3" in out.stdout, out.stdout + out.stderr
    p.wait_settled(3, timeout=60)
    p.assert_end_state()


def test_embedded_folder_broker_runs_the_same_pipeline(make_pipeline: MakePipeline) -> None:
    """The embedded default (folder broker, no server): the same tasks, the
    delivery counter in DATA_DIR/broker, the same end state."""
    p = make_pipeline("", copies=1, others=2)
    assert p.settings.embedded_broker
    worker = p.start_worker("-c", "2", name="embedded")
    p.crawl()
    p.wait_settled(3, timeout=60)
    p.assert_end_state()
    # The worker restarted itself on jemalloc (same pid), and its pool processes forked from it.
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 2
    for pid in [worker.pid, *map(int, children)]:
        assert "libjemalloc" in Path(f"/proc/{pid}/maps").read_text(), pid
    counts = p.settings.broker_dir() / "deliveries"
    # The registrations queued maintenance (a retrain, a snapshot) that the worker
    # may still be running once the uploads have settled: wait for it to finish.
    deadline = time.monotonic() + 120
    while counts.is_dir() and any(counts.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(f.name for f in counts.iterdir()) if counts.is_dir() else None
    assert left == [], f"finished tasks must forget their delivery counts: {left}"
