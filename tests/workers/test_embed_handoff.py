"""The GPU -> CPU embedding hand-off (``workers.embed_stage``), with real Redis and
real ``artwatch worker`` processes; CLIP has random weights (``pretrained=""``).

Whether a process loaded a model is read from outside it: a process that
imported torch has libtorch mapped (``/proc/PID/maps``), so the check needs no
hook in the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from config.settings import load_settings
from storage.db import session_scope
from storage.models import DeadLetter, Match, Upload, UploadStatus
from workers.tasks import MAX_EMBED_REQUESTS, decode_embedding, encode_embedding

from .conftest import Pipeline, RedisServer, wait_for

pytestmark = [pytest.mark.slow]

EMBED_STAGE = {"ARTWATCH_WORKERS__EMBED_STAGE": "true"}
# CLIP on (random weights, on the CPU): the test process registers the work
# with its own model, so the work has CLIP points for the uploads' vectors to meet.
# These tests are about CLIP's hand-off: the descriptor (on by default, computed by
# the CPU workers themselves) is off, so the index holds CLIP points only.
NO_DESCRIPTOR = {"ARTWATCH_MATCHING__DESCRIPTOR": ""}
CLIP_ON = {"ARTWATCH_MATCHING__USE_EMBEDDER": "true", "ARTWATCH_MATCHING__DEVICE": "cpu",
           "ARTWATCH_WORKERS__EMBED_MAX_WAIT_MS": "5", **NO_DESCRIPTOR}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server for each test: these tests read the broker's queues,
    which a shared database would mix with other test runs' messages."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


def _process_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return out
    for c in children:
        out += _process_tree(int(c))
    return out


def _loaded_torch(pid: int) -> list[int]:
    """The processes of ``pid``'s tree that have libtorch mapped."""
    hits = []
    for p in _process_tree(pid):
        try:
            if "libtorch" in Path(f"/proc/{p}/maps").read_text():
                hits.append(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return hits


def _embed_queue(redis_url: str) -> list[dict[str, Any]]:
    import redis

    out = []
    for raw in redis.Redis.from_url(redis_url).lrange("embed", 0, -1):
        headers = json.loads(raw)["headers"]
        out.append({"task": headers["task"], "args": headers.get("argsrepr"), "kwargs": headers.get("kwargsrepr")})
    return out


# ------------------------------------------------------------------ the record


def test_handoff_record_is_small_and_checked(test_settings: Any) -> None:
    """A ViT-B-32 vector travels as ~2.9 KB of JSON; one from another model, of
    another image, or damaged is refused (the analysis then asks again)."""
    rng = np.random.default_rng(1)
    vec = rng.standard_normal(512).astype(np.float32)
    sha = "ab" * 32
    rec = encode_embedding(test_settings, sha, vec)
    assert len(json.dumps(rec)) < 3000
    back = decode_embedding(test_settings, sha, rec)
    assert back is not None and back.dtype == np.float32
    np.testing.assert_array_equal(back, vec)  # exact: float32 bytes, not decimal text
    assert decode_embedding(test_settings, "cd" * 32, rec) is None  # another image
    assert decode_embedding(test_settings, sha, {**rec, "model": "ViT-L-14-openai"}) is None
    assert decode_embedding(test_settings, sha, {**rec, "f32": "not base64!"}) is None
    assert decode_embedding(test_settings, sha, None) is None


# ------------------------------------------------------------------ with workers


@pytest.mark.redis
def test_embedding_travels_to_the_cpu_stage_which_loads_no_model(make_pipeline: Any, redis_url: str) -> None:
    p: Pipeline = make_pipeline(redis_url, copies=2, others=1, env=CLIP_ON)
    cpu = p.start_worker("--role", "cpu", "-c", "1", name="cpu", extra_env=EMBED_STAGE)
    gpu = p.start_worker("--role", "gpu", "-c", "4", name="gpu", extra_env=EMBED_STAGE)
    p.crawl()
    p.wait_settled(3, timeout=240)
    p.assert_end_state()
    with session_scope(p.sessions) as s:
        signals = [m.signals for m in s.scalars(select(Match))]
    # The CPU worker has no model: a CLIP similarity on a match can only come
    # from the vector the GPU worker put in the analyse_upload message.
    assert len(signals) == 2 and all("clip" in sig for sig in signals), signals
    assert _loaded_torch(cpu.pid) == [], "a CPU worker process loaded torch"
    assert _loaded_torch(gpu.pid), "the check cannot see torch in the GPU worker: it checks nothing"
    ours = [d for d in p.dead_letters() if d.task not in ("artwatch.draft_notice", "artwatch.notify_owner")]
    assert not ours, [(d.task, d.error) for d in ours]


@pytest.mark.redis
def test_missing_embedding_goes_back_to_the_gpu_stage(make_pipeline: Any, redis_url: str) -> None:
    """An analyse_upload without an embedding (a stale message, a replay from
    before the embed stage) re-queues embed_upload instead of embedding on the
    CPU; the analysis runs when the GPU stage hands the vector back; and a
    vector that never comes is dead-lettered after MAX_EMBED_REQUESTS."""
    from workers import tasks

    p: Pipeline = make_pipeline(redis_url, copies=1, others=1, env=CLIP_ON)
    cpu = p.start_worker("--role", "cpu", "-c", "1", name="cpu", extra_env=EMBED_STAGE)
    p.crawl()
    # No GPU worker yet: every fetched upload waits on the embed queue.
    wait_for(lambda: len(_embed_queue(redis_url)) == 2, 120, "both uploads to wait for an embedding")
    assert all(u.status == UploadStatus.PENDING for u in p.uploads())
    first = p.uploads()[0].id
    tasks.analyse_upload.delay(first)
    requeued = wait_for(lambda: [m for m in _embed_queue(redis_url) if "'requests': 1" in (m["kwargs"] or "")],
                        60, "analyse_upload to send the upload back to the GPU stage")
    assert requeued[0]["task"] == "artwatch.embed_upload" and str(first) in requeued[0]["args"]
    assert p.uploads()[0].status == UploadStatus.PENDING  # not analysed without its embedding
    assert _loaded_torch(cpu.pid) == []

    p.start_worker("--role", "gpu", "-c", "4", name="gpu", extra_env=EMBED_STAGE)
    p.wait_settled(2, timeout=240)
    p.assert_end_state()

    # The bound: a request that has already gone round MAX_EMBED_REQUESTS times
    # (here with a vector from another model) stops, with the reason.
    with session_scope(p.sessions) as s:
        up = s.get(Upload, first)
        assert up is not None and up.blob_sha256 is not None
        sha = up.blob_sha256
    stale = encode_embedding(load_settings(), sha, np.ones(512, np.float32))
    stale["model"] = "ViT-L-14-elsewhere"
    tasks.analyse_upload.delay(first, embedding=stale, requests=MAX_EMBED_REQUESTS)

    def dead() -> list[DeadLetter]:
        return [d for d in p.dead_letters() if d.task == "artwatch.analyse_upload"]

    letters = wait_for(dead, 60, "the exhausted request to be dead-lettered")
    assert "no usable embedding after 3 requests" in letters[0].error
    assert "ViT-L-14-elsewhere" in letters[0].error
    assert (letters[0].args, letters[0].kwargs) == ([first], {})  # a replay starts the round again
    assert not [m for m in _embed_queue(redis_url) if str(first) in (m["args"] or "")]  # not sent round again


@pytest.mark.redis
def test_work_registered_without_a_model_is_embedded_on_the_gpu_stage(make_pipeline: Any, redis_url: str,
                                                                      tmp_path: Path) -> None:
    """The web process (its app and the registration it runs) loads no model with
    the embed stage on; the work's CLIP points come from an embed_work task,
    queued once the registration commits."""
    p: Pipeline = make_pipeline(redis_url, copies=0, others=0, env=NO_DESCRIPTOR)
    from matching.index import build_index
    from matching.index.vectors import vector_specs
    from matching.signals.clip import RemoteEmbedder

    index = build_index(p.settings, vector_specs(RemoteEmbedder()))
    before = index.count()  # the pipeline's own work, registered with CLIP off: no points
    script = """
import io, json, sys
from PIL import Image
from config.settings import load_settings
from storage.db import make_engine, make_sessionmaker, session_scope
from workers.demo import painting
from webapp.app import create_app
from matching import build_engine
from storage.blobs import build_blob_store
from registry.service import ensure_owner, register_work
from workers.app import configure

settings = load_settings()
configure(settings)
create_app(settings)
buf = io.BytesIO(); painting(7).convert("RGB").save(buf, "JPEG", quality=90)
sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
with session_scope(sessions) as s:
    owner = ensure_owner(s, email="web@example.com")
    w = register_work(s, build_blob_store(settings), build_engine(settings), owner_id=owner.id,
                      data=buf.getvalue(), filename="seven.jpg")
    s.flush()
    wid = w.id
print(json.dumps({"work": wid, "torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules}))
"""
    env = {**p.env, **CLIP_ON, **EMBED_STAGE}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["open_clip"] is False, out
    assert index.count() == before  # nothing embedded yet: that is the GPU stage's job
    queued = _embed_queue(redis_url)
    assert [m["task"] for m in queued] == ["artwatch.embed_work"], queued
    p.start_worker("--role", "gpu", "-c", "4", name="gpu", extra_env={**CLIP_ON, **EMBED_STAGE})
    wait_for(lambda: index.count() > before, 240, "the GPU worker to write the work's CLIP points")
    assert "embed_work" in p.log("gpu")


@pytest.mark.redis
def test_index_rebuild_without_a_model_queues_the_works_embedding(make_pipeline: Any, redis_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`artwatch index rebuild` where no model is loaded re-indexes the local
    features and PDQ at once and leaves the CLIP points to the GPU stage."""
    from click.testing import CliRunner

    from matching.index import build_index
    from matching.index.vectors import vector_specs
    from matching.signals.clip import RemoteEmbedder
    from registry.cli import index_group

    p: Pipeline = make_pipeline(redis_url, copies=0, others=0, env=CLIP_ON)
    index = build_index(p.settings, vector_specs(RemoteEmbedder()))
    assert index.count() > 0  # registered here, with this process's model
    monkeypatch.setenv("ARTWATCH_WORKERS__EMBED_STAGE", "true")
    monkeypatch.setenv("ARTWATCH_BLOBS__PATH", str(p.tmp / "work-blobs"))  # where the pipeline keeps the work
    res = CliRunner().invoke(index_group, ["rebuild"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "1 works queued for CLIP embedding on the GPU workers" in res.output
    queued = _embed_queue(redis_url)
    assert [m["task"] for m in queued] == ["artwatch.embed_work"], queued
    assert index.count() == 0  # until the GPU stage writes them again
