"""Harness for the worker fault tests: real Redis, real worker processes, a
real Mastodon-compatible site on 127.0.0.1.

A :class:`Pipeline` holds the settings of one test (fresh data folder,
SQLite, Redis DB 14 of the machine's Redis or a private redis-server), the
registered works and the site, and starts and kills ``artwatch worker``
processes. Its checks are the ones every fault test ends with: every upload
analysed (or failed with a reason), exactly one match per (work, upload URL)
that copies a work, none for the others, at most one notice item per
(work, URL).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from config.settings import Settings, load_settings
from crawler.localsite import LocalSite
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import Base, DeadLetter, Match, NoticeItem, Source, Upload, UploadStatus
from workers.app import QUEUES
from workers.demo import painting, photo

REDIS_DB = 14  # the e2e test uses 15


def jpeg(img: Image.Image, q: int = 85) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=q)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """A private redis-server on a free port, AOF on (as in docker-compose),
    so it can be killed and restarted without touching the machine's Redis."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
            except redis.exceptions.RedisError:
                return False

        wait_for(up, 10, "redis-server to answer")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@dataclass
class Pipeline:
    settings: Settings
    env: dict[str, str]
    site: LocalSite
    tmp: Path
    copies: dict[str, int] = field(default_factory=dict)  # image URL -> work id it copies
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db = make_engine(self.settings.resolved_database_url())
        self.sessions = make_sessionmaker(self.db)

    # -- processes -----------------------------------------------------

    def start_worker(self, *args: str, name: str, extra_env: dict[str, str] | None = None,
                     log: bool = True) -> subprocess.Popen[bytes]:
        out: Any = open(self.tmp / f"{name}.log", "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed in stop_all)
        if log:
            self._logs.append(out)
        proc = subprocess.Popen([sys.executable, "-m", "workers", "worker", "-n", f"{name}@%h", *args],
                                env={**self.env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for fh in self._logs:
            fh.close()
        self._logs.clear()

    def log(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def crawl(self) -> None:
        from workers import tasks
        from workers.app import configure

        configure(self.settings)
        with session_scope(self.sessions) as s:
            ids = [src.id for src in s.scalars(select(Source))]
        for sid in ids:
            tasks.crawl_source.delay(sid)

    # -- state ---------------------------------------------------------

    def uploads(self) -> list[Upload]:
        with session_scope(self.sessions) as s:
            rows = list(s.scalars(select(Upload).order_by(Upload.id)))
            s.expunge_all()
            return rows

    def dead_letters(self) -> list[DeadLetter]:
        with session_scope(self.sessions) as s:
            rows = list(s.scalars(select(DeadLetter).order_by(DeadLetter.id)))
            s.expunge_all()
            return rows

    def settled(self, expected_uploads: int) -> bool:
        if self.workers and all(w.poll() is not None for w in self.workers):
            raise AssertionError("every worker has exited:\n" + "\n".join(
                self.log(f.name.removesuffix(".log"))[-3000:] for f in self.tmp.glob("*.log")))
        ups = self.uploads()
        return len(ups) == expected_uploads and all(u.status != UploadStatus.PENDING for u in ups)

    def wait_settled(self, expected_uploads: int, timeout: float = 60, *, sweep_every: float = 0) -> None:
        """Wait until every upload has left ``pending``. With ``sweep_every``,
        run the beat's stalled-upload sweep (workers.stalled) that often, as
        ``artwatch beat`` would, so a message Redis lost is queued again."""
        last_sweep = time.monotonic()

        def ok() -> bool:
            nonlocal last_sweep
            if sweep_every and time.monotonic() - last_sweep >= sweep_every:
                from workers import tasks

                tasks.redispatch_stalled.apply().get()
                last_sweep = time.monotonic()
            return self.settled(expected_uploads)

        try:
            wait_for(ok, timeout, f"{expected_uploads} uploads to be analysed")
        except AssertionError:
            states = [(u.id, u.status.value, u.error, u.redispatches) for u in self.uploads()]
            logs = "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}"
                             for f in sorted(self.tmp.glob("*.log")))
            raise AssertionError(f"not settled: (id, status, error, re-queues) {states}\n"
                                 f"broker: {self.broker_state()}\n{logs}") from None
        time.sleep(1.0)  # let drafts queued by the last analysis land

    def broker_state(self) -> dict[str, Any]:
        """Queue lengths and unacked messages on a Redis broker (for failure reports)."""
        if not self.settings.broker_url.startswith("redis"):
            return {}
        import redis

        r = redis.Redis.from_url(self.settings.broker_url)
        state: dict[str, Any] = {q: r.llen(q) for q in QUEUES}
        state["unacked"] = [json.loads(raw)[0]["headers"].get("argsrepr") for raw in r.hvals("unacked")]
        return state

    def assert_end_state(self, *, failed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Every upload analysed (or, for ``failed`` URLs, failed with a reason);
        exactly one match per (work, URL) that copies it and none elsewhere;
        at most one notice item per (work, URL)."""
        with session_scope(self.sessions) as s:
            ups = list(s.scalars(select(Upload)))
            assert ups, "no uploads were crawled"
            for u in ups:
                if u.image_url in failed:
                    assert u.status == UploadStatus.FAILED and u.error, (u.image_url, u.status, u.error)
                else:
                    assert u.status == UploadStatus.ANALYSED, (u.image_url, u.status, u.error)
            pairs = s.execute(select(Upload.image_url, Match.work_id, func.count(Match.id))
                              .join(Match, Match.upload_id == Upload.id)
                              .group_by(Upload.image_url, Match.work_id)).all()
            got = {(url, wid): n for url, wid, n in pairs}
            want = {(url, wid): 1 for url, wid in self.copies.items()}
            assert got == want, f"matches {got} != expected {want}"
            items = s.execute(select(NoticeItem.work_id, NoticeItem.url, func.count(NoticeItem.id))
                              .group_by(NoticeItem.work_id, NoticeItem.url)).all()
            assert all(n <= 1 for _, _, n in items), items


def build_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str, *,
                   copies: int = 2, others: int = 3, extra_posts: list[tuple[bytes, str]] = (),  # type: ignore[assignment]
                   env: dict[str, str] | None = None) -> Pipeline:
    """Settings, schema, one registered work (painting 314), and a site with
    ``copies`` transformed copies of it and ``others`` unrelated photos."""
    for key in list(os.environ):
        if key.startswith("ARTWATCH_") and not key.startswith("ARTWATCH_TEST_"):
            monkeypatch.delenv(key)
    values = {
        "ARTWATCH_DATA_DIR": str(tmp_path / "data"),
        "ARTWATCH_BROKER_URL": broker_url,
        "ARTWATCH_MATCHING__USE_EMBEDDER": "false",
        "ARTWATCH_MATCHING__CLIP_PRETRAINED": "",
        "ARTWATCH_CRAWLER__ALLOW_INTERNAL": '["127.0.0.1"]',
        "ARTWATCH_CRAWLER__REQUESTS_PER_SECOND": "200",
        "ARTWATCH_CRAWLER__MAX_CONCURRENCY_PER_HOST": "8",
        # Short enough that work held by a SIGKILLed worker comes back within
        # the test; every task here takes a few seconds at most.
        "ARTWATCH_WORKERS__VISIBILITY_TIMEOUT_S": "8",
        "ARTWATCH_WORKERS__RESTORE_INTERVAL_S": "1",
        "ARTWATCH_WEB__SECRET_KEY": "worker-tests-secret",
        **(env or {}),
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(engine)
    # The CLI (deadletters list|replay) wants a versioned schema: stamp it.
    from alembic import command

    from workers.migrate import alembic_config

    with engine.begin() as conn:
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = conn
        command.stamp(cfg, "head")

    from matching import build_engine
    from registry.service import ensure_owner, register_work
    from storage.blobs import FolderBlobStore

    site = LocalSite().start()
    matcher = build_engine(settings)
    blobs = FolderBlobStore(tmp_path / "work-blobs")  # the work image, outside a blob dir under test
    work = painting(314)
    with session_scope(make_sessionmaker(engine)) as s:
        owner = ensure_owner(s, email="artist@example.com")
        owner.legal_name, owner.postal_address, owner.phone = "A. Artist", "1 High St, Town", "+1 555 0100"
        w = register_work(s, blobs, matcher, owner_id=owner.id, data=jpeg(work, 95), filename="dusk.jpg",
                          title="Dusk")
        work_id = w.id
        s.add(Source(name="site", kind="mastodon", url=site.url, params={}, poll_seconds=3600))
    engine.dispose()

    expected: dict[str, int] = {}
    boxes = [(60, 40, 700, 540), (0, 0, 640, 480), (100, 80, 768, 576), (30, 30, 600, 500)]
    for i in range(copies):
        copy = work.crop(boxes[i % len(boxes)]).resize((512 - 16 * i, 400 - 12 * i))
        sid = site.add_post(jpeg(copy, 80 - 3 * i), content_type="image/jpeg", text=f"copy {i}", author="copier")
        expected[site.media_url(sid)] = work_id
    for i in range(others):
        site.add_post(jpeg(photo(2718 + i), 85), content_type="image/jpeg", text=f"holiday {i}", author="hiker")
    for data, ctype in extra_posts:
        site.add_post(data, content_type=ctype, text="poison", author="troll")
    env_out = {k: v for k, v in os.environ.items()}
    return Pipeline(settings=settings, env=env_out, site=site, tmp=tmp_path, copies=expected)


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """DB 14 of the machine's Redis, emptied."""
    import redis
    from redis.connection import parse_url  # noqa: F401

    base = redis_server_url.rsplit("/", 1)[0] if redis_server_url.count("/") > 2 else redis_server_url
    url = f"{base}/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def make_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(broker_url: str, **kwargs: Any) -> Pipeline:
        p = build_pipeline(tmp_path, monkeypatch, broker_url, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop_all()
        p.site.stop()
        p.db.dispose()
