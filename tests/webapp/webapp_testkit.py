"""Web app test kit: a real app over a real database, matching engine and blob store.

SQLite by default; when ARTWATCH_TEST_POSTGRES_URL is set every test here runs
on PostgreSQL instead, in a database created for this test session (tables are
emptied between tests).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, load_settings
from storage.blobs import FolderBlobStore
from storage.db import make_engine, make_sessionmaker, session_scope
from storage.models import (
    Account,
    Base,
    Match,
    Notice,
    NoticeItem,
    Role,
    Upload,
    UploadStatus,
    Work,
    WorkKind,
)
from webapp import create_app
from webapp.security import hash_password, issue_api_token

PASSWORD = "correct horse battery"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    server = os.environ.get("ARTWATCH_TEST_POSTGRES_URL")
    if not server:
        yield None
        return
    name = f"artwatch_web_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db_engine(tmp_path: Path, pg_database: str | None) -> Iterator[Engine]:
    if pg_database is None:
        engine = make_engine(f"sqlite:///{tmp_path / 'artwatch.db'}")
        Base.metadata.create_all(engine)
    else:
        engine = make_engine(pg_database)
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    yield engine
    engine.dispose()


HOSTS_TOML = """
[hosts."pics.example"]
name = "Pics Example"
domains = ["pics.example"]
law = "dmca"
email = "dmca-agent@pics.example"
verify = false
"""


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    for key in os.environ:
        if key.startswith("ARTWATCH_") and not key.startswith("ARTWATCH_TEST_"):
            raise RuntimeError(f"unset {key} before running the web tests")
    data_dir.mkdir(parents=True, exist_ok=True)
    hosts = data_dir / "test-hosts.toml"
    hosts.write_text(HOSTS_TOML, encoding="utf-8")
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "notices": {"hosts_file": str(hosts)},
        "matching": {"clip_pretrained": "", "use_embedder": False, "descriptor": ""},
        "web": {"secret_key": "test-secret-key"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(**base)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@lru_cache(maxsize=64)
def logo_png(seed: int, text: str = "ACME") -> bytes:
    from workers.demo import logo

    return png(logo(seed, text))


def product_shot(logo_bytes: bytes, seed: int = 5) -> tuple[bytes, list[list[float]]]:
    """The logo pasted onto a photo; returns the JPEG and the paste rectangle as a polygon."""
    from workers.demo import photo

    base = photo(seed, (640, 480)).convert("RGB")
    mark = Image.open(io.BytesIO(logo_bytes)).convert("RGBA").resize((256, 256))
    base.paste(mark, (320, 160), mark)
    return jpeg(base), [[320, 160], [576, 160], [576, 416], [320, 416]]


@lru_cache(maxsize=1)
def _password_hash() -> str:
    # One argon2 hash shared by every test account (hashing costs ~0.1 s each).
    return hash_password(PASSWORD)


@dataclass
class World:
    """The app under test plus helpers that create rows the way the system would."""

    settings: Settings
    sessions: sessionmaker[Session]
    blobs: FolderBlobStore
    engine: Any
    app: FastAPI
    tokens: dict[str, str] = field(default_factory=dict)

    def account(self, email: str, role: Role = Role.OWNER, **fields: Any) -> int:
        with session_scope(self.sessions) as s:
            acct = Account(
                email=email,
                role=role,
                password_hash=_password_hash(),
                display_name=email.split("@", maxsplit=1)[0],
                legal_name=f"{email} Ltd",
                postal_address="1 Test Street, Testville",
                phone="+1 555 0100",
                **fields,
            )
            s.add(acct)
            s.flush()
            self.tokens[email] = issue_api_token(acct)
            return acct.id

    def client(self, email: str | None = None) -> TestClient:
        client = TestClient(self.app, follow_redirects=False)
        if email is not None:
            login(client, email)
        return client

    def api(self, email: str) -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {self.tokens[email]}"})

    def work(
        self,
        owner_id: int,
        data: bytes,
        title: str = "Logo",
        kind: str = "logo",
        licensed: tuple[str, ...] = (),
        *,
        indexed: bool = False,
    ) -> int:
        """A registered work. indexed=True goes through the real pipeline and matching engine
        (about 2 s per work on the test machine); otherwise only the rows and blob are written,
        which is all a page that lists or shows the work needs."""
        from registry.service import register_work

        with session_scope(self.sessions) as s:
            if indexed:
                work = register_work(
                    s,
                    self.blobs,
                    self.engine,
                    owner_id=owner_id,
                    data=data,
                    filename=f"{title}.png",
                    title=title,
                    kind=kind,
                    licensed_sites=licensed,
                )
            else:
                work = Work(
                    owner_id=owner_id,
                    title=title,
                    kind=WorkKind(kind),
                    blob_sha256=self.blobs.put(data),
                    filename=f"{title}.png",
                    licensed_sites=list(licensed),
                )
                s.add(work)
                s.flush()
            return work.id

    def match(
        self,
        work_id: int,
        data: bytes,
        *,
        url: str,
        score: float = 0.93,
        region: list[list[float]] | None = None,
        signals: dict[str, float] | None = None,
        age: timedelta = timedelta(0),
    ) -> int:
        """An upload captured at url that matched work_id (rows as the pipeline writes them)."""
        from urllib.parse import urlsplit

        with session_scope(self.sessions) as s:
            work = s.get(Work, work_id)
            assert work is not None
            now = datetime.now(UTC) - age
            upload = Upload(
                canonical_url=url,
                host=urlsplit(url).hostname or "",
                page_url=url,
                image_url=url + ".jpg",
                blob_sha256=self.blobs.put(data),
                content_type="image/jpeg",
                fetched_at=now,
                status=UploadStatus.ANALYSED,
                author="copier",
            )
            s.add(upload)
            s.flush()
            m = Match(
                upload_id=upload.id,
                work_id=work.id,
                owner_id=work.owner_id,
                score=score,
                signals=signals or {"pdq": 0.81, "local": 0.95},
                region=region,
                created_at=now,
            )
            s.add(m)
            s.flush()
            return m.id

    def draft(self, match_id: int) -> int:
        """The real drafting step (notices.drafting), as the pipeline's notify task runs it."""
        from notices.drafting import draft_for_match

        with session_scope(self.sessions) as s:
            notice = draft_for_match(s, match_id, self.settings)
            assert notice is not None
            return notice.id

    def notice(
        self,
        owner_id: int,
        match_ids: list[int],
        host: str = "pics.example",
        age: timedelta = timedelta(0),
    ) -> int:
        """A draft notice over the given matches (rows only; the drafting helper fills bodies)."""
        with session_scope(self.sessions) as s:
            n = Notice(
                owner_id=owner_id,
                host=host,
                law="dmca",
                recipient=f"dmca@{host}",
                subject=f"DMCA notice for {host}",
                body_text="Dear agent,\n...",
                created_at=datetime.now(UTC) - age,
            )
            s.add(n)
            s.flush()
            for mid in match_ids:
                m = s.get(Match, mid)
                assert m is not None
                s.add(
                    NoticeItem(
                        notice_id=n.id, match_id=mid, work_id=m.work_id, url=m.upload.page_url
                    )
                )
            s.flush()
            return n.id


def login(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    page = client.get("/login")
    token = csrf_from(page.text)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def csrf_from(html: str) -> str:
    import re

    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "page has no CSRF token"
    return found.group(1)


@pytest.fixture(scope="session")
def engine_factory() -> Any:
    from matching import build_engine

    return build_engine


@pytest.fixture
def world(tmp_path: Path, db_engine: Engine, engine_factory: Any) -> World:
    settings = make_settings(tmp_path / "data")
    sessions = make_sessionmaker(db_engine)
    blobs = FolderBlobStore(settings.blob_dir())
    matcher = engine_factory(settings)
    app = create_app(settings, sessions=sessions, blobs=blobs, engine=matcher)
    return World(settings, sessions, blobs, matcher, app)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def start_web_command(data_dir: Path, port: int, *, capture: bool) -> subprocess.Popen[str]:
    """``artwatch web`` (the real click command, real uvicorn) in a child process
    on 127.0.0.1:``port``, over a fresh schema in ``data_dir``; only the test
    servers' ``ARTWATCH_TEST_*`` variables reach it. ``capture`` pipes its
    output (stdout and stderr together) for the caller to read."""
    script = textwrap.dedent(f"""
        import sys
        from types import SimpleNamespace
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from webapp_testkit import make_settings
        from storage.db import make_engine, make_sessionmaker
        from storage.blobs import FolderBlobStore
        from storage.models import Base
        from webapp.cli import web_command
        from pathlib import Path
        settings = make_settings(Path({str(data_dir)!r}), web={{"port": {port}}})
        engine = make_engine(settings.resolved_database_url())
        Base.metadata.create_all(engine)
        obj = SimpleNamespace(settings=settings, sessions=make_sessionmaker(engine),
                              blobs=FolderBlobStore(settings.blob_dir()))
        web_command.main([], obj=obj, standalone_mode=True)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTWATCH_") or k.startswith("ARTWATCH_TEST_")}
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-c", script], stdout=out,
                            stderr=subprocess.STDOUT if capture else subprocess.DEVNULL, env=env,
                            cwd=Path(__file__).resolve().parents[2], text=True)


def wait_until_answering(url: str, proc: subprocess.Popen[str], timeout: float) -> httpx.Response:
    """GET ``url`` until the server answers; raise if ``proc`` died or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)


@contextmanager
def serve(app: FastAPI) -> Iterator[tuple[str, int]]:
    """``app`` served by a real uvicorn server on a free 127.0.0.1 port, in a thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
