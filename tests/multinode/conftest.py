"""Harness for the two-node test: nodes that share nothing but the services.

A :class:`Cluster` is one fresh PostgreSQL database, one emptied Redis DB (the
broker), one fresh S3 bucket on moto's server, and a Mastodon-compatible site
on 127.0.0.1. Each :class:`Node` is a set of processes (``artwatch web``,
``artwatch worker``, one-shot ``artwatch`` commands) with a DATA_DIR of its own
that no other node can see, so any state that still lives under DATA_DIR shows
up as a node that cannot find what another one wrote.

Every wait has a generous timeout and fails with the tails of all the
processes' logs; nothing here asserts how long something took.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from crawler.localsite import LocalSite
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import DeadLetter, Match, Notice, NoticeItem, Upload, UploadStatus

REDIS_DB = 13  # tests/workers use 14, the e2e test 15
SECRET_KEY = "multinode-test-secret-key"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One machine's worth of artwatch processes, with its own DATA_DIR."""

    name: str
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.env["ARTWATCH_DATA_DIR"])

    def cli(self, *args: str, input: str = "") -> str:
        """Run ``artwatch ARGS`` on this node; return its stdout, fail with its output."""
        proc = subprocess.run([sys.executable, "-m", "workers", *args], env=self.env, capture_output=True,
                              text=True, input=input, timeout=180, check=False)
        assert proc.returncode == 0, (f"node {self.name}: `artwatch {' '.join(args)}` exited {proc.returncode}\n"
                                      f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        return proc.stdout

    def _start(self, key: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{self.name}-{key}.log", "ab") as out:
            # A session of its own, so a SIGKILL can take the whole process
            # group (the prefork pool's children die with their parent).
            proc = subprocess.Popen([sys.executable, "-m", "workers", *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[key] = proc
        return proc

    def start_worker(self, queues: str, concurrency: int = 1) -> subprocess.Popen[bytes]:
        return self._start("worker", ["worker", "-Q", queues, "-c", str(concurrency), "--pool", "prefork",
                                      "-n", f"{self.name}@%h"])

    def start_web(self, port: int) -> subprocess.Popen[bytes]:
        return self._start("web", ["web", "--host", "127.0.0.1", "--port", str(port)])

    def kill(self, key: str) -> None:
        """SIGKILL the process and every process of its group: no clean-up runs."""
        proc = self.procs.pop(key)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


@dataclass
class Cluster:
    """The shared services, the site, and the nodes on them."""

    tmp: Path
    database_url: str
    broker_url: str
    base_env: dict[str, str]
    site: LocalSite
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db: Engine = make_engine(self.database_url)
        self.sessions = make_sessionmaker(self.db)
        import redis

        self.redis = redis.Redis.from_url(self.broker_url)

    def node(self, name: str) -> Node:
        data = self.tmp / f"node-{name}"
        data.mkdir(parents=True)
        node = Node(name=name, env={**self.base_env, "ARTWATCH_DATA_DIR": str(data)}, logs=self.tmp)
        self.nodes.append(node)
        return node

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for f in sorted(self.tmp.glob("*.log")):
            parts.append(f"----- {f.name} (last {tail} chars)\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def wait_for(self, cond: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
        """Poll ``cond`` until it is truthy; fail with every log if ``timeout`` passes
        or a started process has died."""
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            dead = [f"{n.name}-{k} (exit {p.returncode})" for n in self.nodes for k, p in n.procs.items()
                    if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"processes exited: {dead}" if dead else f"timed out after {timeout:.0f} s"
                raise AssertionError(f"{why} waiting for {what}\nstate: {self.state()}\n{self.logs()}")
            time.sleep(every)

    # -- shared state, read from the services --------------------------------

    def uploads(self) -> list[tuple[int, str, UploadStatus, str | None]]:
        with session_scope(self.sessions) as s:
            return [(u.id, u.image_url, u.status, u.error) for u in s.scalars(select(Upload).order_by(Upload.id))]

    def matches(self) -> dict[tuple[str, int], int]:
        """(upload image URL, work id) -> number of Match rows."""
        with session_scope(self.sessions) as s:
            rows = s.execute(select(Upload.image_url, Match.work_id, func.count(Match.id))
                             .join(Match, Match.upload_id == Upload.id)
                             .group_by(Upload.image_url, Match.work_id)).all()
            return {(url, wid): n for url, wid, n in rows}

    def notice_items(self) -> dict[tuple[int, str], int]:
        """(work id, infringing URL) -> number of notice items."""
        with session_scope(self.sessions) as s:
            rows = s.execute(select(NoticeItem.work_id, NoticeItem.url, func.count(NoticeItem.id))
                             .group_by(NoticeItem.work_id, NoticeItem.url)).all()
            return {(wid, url): n for wid, url, n in rows}

    def notices(self) -> int:
        with session_scope(self.sessions) as s:
            return int(s.scalar(select(func.count(Notice.id))) or 0)

    def dead_letters(self) -> list[tuple[str, str]]:
        with session_scope(self.sessions) as s:
            return [(d.task, d.error) for d in s.scalars(select(DeadLetter))]

    def state(self) -> dict[str, Any]:
        try:
            return {"uploads": [(i, st.value, err) for i, _, st, err in self.uploads()],
                    "matches": self.matches(), "notice_items": self.notice_items(),
                    "dead_letters": self.dead_letters()}
        except Exception as exc:  # noqa: BLE001 (a failure report must not fail itself)
            return {"error": repr(exc)}

    def settled(self, expected_uploads: int) -> bool:
        ups = self.uploads()
        return len(ups) == expected_uploads and all(st != UploadStatus.PENDING for _, _, st, _ in ups)

    def wait_settled(self, expected_uploads: int, timeout: float = 120) -> None:
        """Every upload crawled and analysed (or failed), and the notify queue drained."""
        r = self.redis
        self.wait_for(lambda: self.settled(expected_uploads) and r.llen("notify") == 0
                      and not r.hlen("unacked"), timeout, f"{expected_uploads} uploads to be analysed")

    def unacked(self) -> list[dict[str, Any]]:
        """Messages delivered to a worker and not yet acknowledged (kombu's hash)."""
        out = []
        for raw in self.redis.hvals("unacked"):
            msg, _exchange, routing_key = json.loads(raw)
            out.append({"task": msg["headers"]["task"], "id": msg["headers"]["id"], "queue": routing_key,
                        "args": msg["headers"].get("argsrepr")})
        return out

    def deliveries(self, task_id: str) -> int:
        """How many times a worker has started this task (workers.deliveries)."""
        return int(self.redis.get(f"artwatch:deliveries:{task_id}:0") or 0)


def wait_answering(cluster: Cluster, url: str) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    cluster.wait_for(up, 90, f"the web process to answer at {url}")


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, redis_server_url: str, s3_env: dict[str, str]) -> Iterator[Cluster]:
    import redis

    base = redis_server_url.rsplit("/", 1)[0] if redis_server_url.count("/") > 2 else redis_server_url
    broker = f"{base}/{REDIS_DB}"
    redis.Redis.from_url(broker).flushdb()
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith("ARTWATCH_") or k.startswith("ARTWATCH_TEST_")}
    env = {
        **inherited,
        **s3_env,
        "ARTWATCH_DATABASE_URL": postgres_url,
        "ARTWATCH_BROKER_URL": broker,
        "ARTWATCH_SHARED__KIND": "services",
        "ARTWATCH_WEB__SECRET_KEY": SECRET_KEY,
        # Local features and PDQ decide here; CLIP (even untrained) would add
        # a torch import to every process on a 2-core machine.
        "ARTWATCH_MATCHING__USE_EMBEDDER": "false",
        # No Qdrant server here: the descriptor's vectors would need one in "services" mode.
        "ARTWATCH_MATCHING__DESCRIPTOR": "",
        "ARTWATCH_MATCHING__CLIP_PRETRAINED": "",
        "ARTWATCH_CRAWLER__ALLOW_INTERNAL": '["127.0.0.1"]',
        "ARTWATCH_CRAWLER__REQUESTS_PER_SECOND": "200",
        "ARTWATCH_CRAWLER__MAX_CONCURRENCY_PER_HOST": "8",
        # Work held by a SIGKILLed worker comes back within the test; every
        # task here takes a few seconds at most.
        "ARTWATCH_WORKERS__VISIBILITY_TIMEOUT_S": "8",
        "ARTWATCH_WORKERS__RESTORE_INTERVAL_S": "1",
    }
    site = LocalSite().start()
    c = Cluster(tmp=tmp_path, database_url=postgres_url, broker_url=broker, base_env=env, site=site)
    try:
        yield c
    finally:
        for node in c.nodes:
            node.stop()
        site.stop()
        c.db.dispose()
        c.redis.close()
