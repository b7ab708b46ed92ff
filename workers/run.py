"""``artwatch run``: the whole job on one machine, on the embedded default.

Starts a real Celery worker process on the configured broker, queues a crawl
of every enabled source, waits until every upload has been fetched and
analysed and the notice drafts have settled, prints a summary, and then (by
default) serves the web UI until interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from config.settings import Settings
from registry.root import Services
from storage.db import check_database, session_scope
from storage.models import (
    Account,
    Match,
    MatchStatus,
    Notice,
    NoticeState,
    Source,
    Upload,
    UploadStatus,
)
from workers import migrate

__all__ = ["RunSummary", "run_job", "summary_lines", "worker_process"]

DEMO_OWNER = "studio@bluefinch.example"
DEMO_REVIEWER = "reviewer@artwatch.example"
DEMO_PASSWORD = "artwatch-demo"
DEMO_PORT = 8765


class RunSummary(dict[str, Any]):
    pass


def _env_for(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["ARTWATCH_DATA_DIR"] = str(settings.data_dir.resolve())
    env.update(extra)
    return env


@contextmanager
def worker_process(settings: Settings, extra_env: dict[str, str] | None = None,
                   concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """A real `artwatch worker` child process, stopped (warm shutdown) on exit."""
    log_path = settings.data_dir / "worker.log"
    log = open(log_path, "ab")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers", "worker", "-c", str(concurrency)],
        env=_env_for(settings, extra_env or {}), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _snapshot(sessions: Any) -> tuple[int, ...]:
    with session_scope(sessions) as s:
        return (
            s.scalar(select(func.count(Upload.id))) or 0,
            s.scalar(select(func.count(Upload.id)).where(Upload.status != UploadStatus.PENDING)) or 0,
            s.scalar(select(func.count(Match.id))) or 0,
            s.scalar(select(func.count(Notice.id))) or 0,
            s.scalar(select(func.sum(Source.uploads_seen))) or 0,
        )


def _sources_done(sessions: Any, since: datetime) -> bool:
    with session_scope(sessions) as s:
        for src in s.scalars(select(Source).where(Source.enabled.is_(True))):
            stamps = [t for t in (src.last_success_at, src.last_error_at) if t is not None]
            stamps = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in stamps]
            if not any(t >= since for t in stamps):
                return False
        return True


def wait_until_settled(settings: Settings, sessions: Any, since: datetime, *, timeout: float,
                       settle_s: float = 4.0, progress: Callable[[str], None] | None = None,
                       proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until sources were polled, nothing is pending or queued, and counts hold still."""
    from workers.app import app
    from workers.broker import queue_depths

    deadline = time.monotonic() + timeout
    last: tuple[int, ...] | None = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the worker process exited with status {proc.returncode}; see {settings.data_dir / 'worker.log'}"
            )
        snap = _snapshot(sessions)
        queued = sum(n or 0 for n in queue_depths(app, settings).values())
        if snap != last:
            last, stable_since = snap, time.monotonic()
        if progress:
            progress(f"uploads {snap[0]} (analysed {snap[1]}), matches {snap[2]}, notices {snap[3]}, queued {queued}")
        settled = time.monotonic() - stable_since >= settle_s
        if settled and queued == 0 and snap[0] == snap[1] and _sources_done(sessions, since):
            return True
        time.sleep(0.5)
    return False


def _summary(sessions: Any, since: datetime) -> RunSummary:
    """Counts, and the sources whose poll failed during this run (each with its reason and hint)."""
    from crawler.health import source_health

    with session_scope(sessions) as s:
        failed = [h for h in source_health(s) if h.enabled and h.failed_since(since)]
        return RunSummary(
            sources_failed=[{"name": h.name, "kind": h.kind, "error": h.last_error, "hint": h.hint} for h in failed],
            sources_failed_lines=[h.describe() for h in failed],
            uploads_seen=s.scalar(select(func.count(Upload.id))) or 0,
            uploads_new=s.scalar(select(func.count(Upload.id)).where(Upload.created_at >= since)) or 0,
            analysed=s.scalar(select(func.count(Upload.id)).where(Upload.status == UploadStatus.ANALYSED)) or 0,
            failed=s.scalar(select(func.count(Upload.id)).where(Upload.status == UploadStatus.FAILED)) or 0,
            matches=s.scalar(select(func.count(Match.id)).where(
                Match.status.notin_((MatchStatus.SUPPRESSED, MatchStatus.DISMISSED)))) or 0,
            suppressed=s.scalar(select(func.count(Match.id)).where(Match.status == MatchStatus.SUPPRESSED)) or 0,
            drafts=s.scalar(select(func.count(Notice.id)).where(
                Notice.state.in_([NoticeState.DRAFT, NoticeState.IN_REVIEW]))) or 0,
        )


def summary_lines(summary: RunSummary, *, sources: int, settled: bool, timeout: float) -> list[str]:
    """What ``artwatch run`` prints after the crawl: never an all-clear when a source failed."""
    failed = summary["sources_failed"]
    head = "summary"
    if not settled:
        head += f" (stopped waiting after {timeout:.0f} s; work may still be queued)"
    if failed:
        head += f" - {len(failed)} of {sources} sources failed, see below"
    lines = [
        head,
        f"  uploads seen:           {summary['uploads_seen']} ({summary['uploads_new']} new this run)",
        f"  analysed / failed:      {summary['analysed']} / {summary['failed']}",
        f"  matches:                {summary['matches']}"
        + (f" (+{summary['suppressed']} on licensed sites, not flagged)" if summary["suppressed"] else ""),
        f"  drafts waiting review:  {summary['drafts']}",
    ]
    if failed:
        lines.append(f"  sources failed:         {len(failed)} of {sources}")
        lines += [f"    - {line}" for line in summary["sources_failed_lines"]]
    return lines


def _ensure_initialised(services: Services, echo: Callable[[str], None]) -> Any:
    settings = services.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = services.db
    check_database(db)
    try:
        migrate.require_initialised(db, settings)
    except migrate.NotInitialised:
        echo(
            migrate.init_database(db, settings, upgrade=True) + f": {migrate.redact(settings.resolved_database_url())}"
        )
    return db


def _setup_demo(services: Services, site_url: str, echo: Callable[[str], None]) -> None:
    from matching import build_engine
    from registry.service import ensure_owner, register_work
    from workers.demo import sample_works

    # No maintenance hook: the worker is not started yet, so the registry's
    # first vocabulary is trained here, in this process, as it always was.
    matcher = build_engine(services.settings)
    sessions, blobs = services.sessions, services.blobs
    with session_scope(sessions) as s:
        owner = ensure_owner(s, email=DEMO_OWNER, display_name="Bluefinch Studio")
        owner.legal_name = owner.legal_name or "Bluefinch Studio Ltd"
        owner.postal_address = owner.postal_address or "1 Example Street, Springfield, EX1 2MP"
        owner.phone = owner.phone or "+1 555 0100"
        # No mail server is configured for the demo; `artwatch owners set --alerts` turns alerts on.
        owner.alert_mode = "off"
        _set_password(s, owner, DEMO_PASSWORD, "owner")
        reviewer = ensure_owner(s, email=DEMO_REVIEWER, display_name="Demo reviewer")
        _set_password(s, reviewer, DEMO_PASSWORD, "reviewer")
        for w in sample_works():
            register_work(s, blobs, matcher, owner_id=owner.id, data=w.data, filename=w.filename,
                          title=w.title, kind=w.kind, external_id=w.external_id)
        src = s.scalar(select(Source).where(Source.name == "demo-site"))
        if src is None:
            src = Source(name="demo-site", kind="mastodon", url=site_url, params={})
            s.add(src)
        src.url = site_url
        src.enabled = True
    echo(f"registered {len(sample_works())} sample works for {DEMO_OWNER}")


def _set_password(session: Any, account: Account, password: str, role: str) -> None:
    from storage.models import Role

    account.role = Role(role)
    if account.password_hash:
        return
    from storage.passwords import hash_password

    account.password_hash = hash_password(password)


@contextmanager
def _demo_site() -> Iterator[Any]:
    from crawler.localsite import LocalSite
    from workers.demo import demo_uploads

    try:  # a fixed port keeps the demo's URLs (and so its dedupe) stable across runs
        site = LocalSite(port=DEMO_PORT)
    except OSError:
        site = LocalSite()
    for up in demo_uploads():
        site.add_post(up.data, content_type=up.content_type, text=up.text, author=up.author)
    with site:
        yield site


def run_job(settings: Settings, *, demo: bool, web: bool, timeout: float,
            echo: Callable[[str], None] = print,
            serve_web: Callable[[], None] | None = None) -> RunSummary:
    """Crawl, analyse, match and draft on this machine, then print a summary.

    With ``web``, ``serve_web()`` serves the web UI afterwards (the ``run``
    command passes the mounted ``web`` command: this module imports no web code).
    """
    extra_env: dict[str, str] = {}
    if demo:
        # The demo site lives on 127.0.0.1, which the crawler refuses unless told.
        allow = sorted(set(settings.crawler.allow_internal) | {"127.0.0.1"})
        crawler_settings = settings.crawler.model_copy(update={"allow_internal": allow})
        settings = settings.model_copy(update={"crawler": crawler_settings})
        extra_env["ARTWATCH_CRAWLER__ALLOW_INTERNAL"] = json.dumps(allow)
    services = Services.build(settings)
    _ensure_initialised(services, echo)
    sessions = services.sessions
    from workers.tasks import configured_app

    app = configured_app(settings)
    from workers.broker import check_broker

    check_broker(app, settings)
    site_cm = _demo_site() if demo else nullcontext(None)
    with site_cm as site:
        if demo:
            assert site is not None
            echo(f"demo image site: {site.url}")
            _setup_demo(services, site.url, echo)
        since = datetime.now(UTC)
        with worker_process(settings, extra_env) as proc:
            from workers import tasks

            with session_scope(sessions) as s:
                ids = [src.id for src in s.scalars(select(Source).where(Source.enabled.is_(True)))]
            if not ids:
                echo("no enabled sources: add one with `artwatch sources add`, or try `artwatch run --demo`")
            for sid in ids:
                tasks.crawl_source.delay(sid)
            echo(
                f"crawling {len(ids)} sources with a worker process (pid {proc.pid}); "
                f"log: {settings.data_dir / 'worker.log'}"
            )
            last_line = ""

            def progress(line: str) -> None:
                nonlocal last_line
                if line != last_line and sys.stderr.isatty():
                    sys.stderr.write("\r  " + line + " " * 10)
                    sys.stderr.flush()
                last_line = line

            ok = wait_until_settled(settings, sessions, since, timeout=timeout, progress=progress, proc=proc)
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            summary = _summary(sessions, since)
            echo("")
            for out_line in summary_lines(summary, sources=len(ids), settled=ok, timeout=timeout):
                echo(out_line)
            echo("  where to look:          `artwatch notices list`, `artwatch status`")
        if web:
            url = settings.web.base_url
            login = f"  (log in as {DEMO_REVIEWER} / {DEMO_PASSWORD})" if demo else ""
            echo(f"  web UI:                 {url}{login}")
            echo("serving the web UI; Ctrl-C to stop")
            if serve_web is not None:
                serve_web()
    return summary
