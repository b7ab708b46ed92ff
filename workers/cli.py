"""The ``artwatch`` command line.

Settings are loaded once here and handed to every subcommand through
``ctx.obj`` (:class:`CliContext`). Subcommand groups owned by other packages
(sources, notices, scan, web, users) are mounted at the bottom. Known errors
print one clear line and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import ConfigError, Settings, load_settings
from registry.root import Services
from storage.blobs import BlobStore, BlobStoreError
from storage.db import DatabaseUnavailable, check_database, session_scope
from storage.models import Account, Match, Notice, NoticeState, Source, Upload, UploadStatus, Work
from workers import migrate

__all__ = ["CliContext", "cli", "main"]


@dataclass
class CliContext:
    """What every subcommand may use; built lazily so --help needs nothing.

    The parts come from one :class:`registry.root.Services`; this adds the
    command line's checks (an initialised data folder, a database that answers).
    """

    settings: Settings
    verbose: bool = False
    _services: Services | None = field(default=None, repr=False)

    @property
    def services(self) -> Services:
        if self._services is None:
            self._services = Services.build(self.settings)
        return self._services

    @cached_property
    def db(self) -> Any:
        url = self.settings.resolved_database_url()
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).parent.exists():
            raise migrate.NotInitialised(f"no artwatch data folder at {self.settings.data_dir.resolve()}: "
                                         "run `artwatch init` first")
        engine = self.services.db
        check_database(engine)
        return engine

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        migrate.require_initialised(self.db, self.settings)
        return self.services.sessions

    @property
    def blobs(self) -> BlobStore:
        return self.services.blobs

    @property
    def matcher(self) -> Any:
        """The engine; due retrains and snapshots go to the maintenance queue
        when a worker will take them (:mod:`workers.maintenance`)."""
        return self.services.matcher


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        ConfigError, DatabaseUnavailable, BlobStoreError, migrate.NotInitialised,
        migrate.AlreadyInitialised,
    ]
    from registry.service import PipelineError

    errors.append(PipelineError)
    from workers.broker import BrokerUnavailable

    errors.append(BrokerUnavailable)
    from matching.errors import MatchingError

    errors.append(MatchingError)
    return tuple(errors)


class ArtwatchGroup(click.Group):
    """Turns known errors anywhere below into one line on stderr, exit 2.

    The top-level group also knows the lazily imported subcommands in
    ``_LAZY``; its ``--help`` lists them from their stored one-line help, so
    listing commands imports none of them.

    A ``click.ClickException`` raised by a command (not a usage error, which
    click reports with the usage) is a known error too, so every command's
    refusals read the same.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = _LAZY if self.name == "cli" else {}
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and self.name == "cli" and cmd_name in _LAZY:
            import importlib

            module, attr, _ = _LAZY[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.name != "cli":
            return super().format_commands(ctx, formatter)
        rows = []
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        for name in self.list_commands(ctx):
            known = self.commands.get(name)
            if known is not None:
                if known.hidden:
                    continue
                rows.append((name, known.get_short_help_str(limit)))
            else:
                rows.append((name, click.Command(name, help=_LAZY[name][2]).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.UsageError):
            raise
        except click.ClickException as exc:
            click.secho(f"error: {exc.format_message()}", fg="red", err=True)
            ctx.exit(2)
        except Exception as exc:
            # Checked here rather than in the except clause: the known errors'
            # modules (the engine, the broker) load only when something failed.
            if not isinstance(exc, _known_errors()):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(2)


# Long-running commands whose logs are their output; every other command
# prints its answer and logs only warnings (config.logging.setup_logging).
_SERVICES = frozenset({"worker", "beat", "web"})


@click.group(cls=ArtwatchGroup)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="ARTWATCH_CONFIG",
              help="TOML file overriding config/defaults.toml (also ARTWATCH_CONFIG).")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """artwatch: find copies of registered artworks and logos on image sites
    and draft takedown notices for a person to review."""
    import os

    if config_file:
        os.environ["ARTWATCH_CONFIG"] = config_file
    settings = load_settings()
    from config.logging import setup_logging

    setup_logging(settings, level="DEBUG" if verbose else None, quiet=ctx.invoked_subcommand not in _SERVICES)
    ctx.obj = CliContext(settings, verbose=verbose)


# ---------------------------------------------------------------- init


@cli.command()
@click.option("--upgrade", is_flag=True, help="Apply new migrations to an existing database.")
@click.pass_obj
def init(obj: CliContext, upgrade: bool) -> None:
    """Create the data folder and the database schema."""
    obj.settings.data_dir.mkdir(parents=True, exist_ok=True)
    obj.blobs.check()
    done = migrate.init_database(obj.db, obj.settings, upgrade=upgrade)
    click.echo(f"{done}: {migrate.redact(obj.settings.resolved_database_url())}")
    click.echo(f"data folder: {obj.settings.data_dir.resolve()}")


# ---------------------------------------------------------------- works


@cli.group()
def works() -> None:
    """Register, list and remove works (logos and artworks)."""


def _read_image(path: Path) -> bytes:
    from registry.service import PipelineError

    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read: {exc.strerror}") from None


@works.command("add")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--owner", required=True, help="Owner's email (or id); must exist unless --create-owner.")
@click.option("--create-owner", is_flag=True, help="Create the owner if there is none (add the details notices "
                                                   "need with `artwatch owners set`).")
@click.option("--title", default="", help="Title shown in notices (default: the file name).")
@click.option("--kind", type=click.Choice(["logo", "artwork"]), default="artwork", show_default=True)
@click.option("--registration", default="", help="Copyright or trademark registration number.")
@click.option("--licensed", multiple=True, help="Host or account URL licensed to use the work (repeatable).")
@click.option("--id", "external_id", default=None, help="Your own id for the work (re-adding it updates it).")
@click.pass_obj
def works_add(obj: CliContext, image: Path, owner: str, create_owner: bool, title: str, kind: str,
              registration: str, licensed: tuple[str, ...], external_id: str | None) -> None:
    """Register one image file as a work.

    The owner must exist (``artwatch owners set``) unless --create-owner is
    given: a mistyped email would otherwise make a new owner with none of the
    details a notice needs."""
    from registry.service import PipelineError, ensure_owner, register_work

    data = _read_image(image)
    with session_scope(obj.sessions) as s:
        acct = s.scalar(select(Account).where((func.lower(Account.email) == owner.strip().lower())
                                              | (Account.external_id == owner)))
        if acct is None and not create_owner:
            raise PipelineError(f"no owner {owner}: check the spelling, register them with `artwatch owners set "
                                f"{owner} --legal-name ... --address ... --phone ...`, or pass --create-owner")
        created = acct is None
        acct = acct or ensure_owner(s, email=owner.strip())
        work = register_work(s, obj.blobs, obj.matcher, owner_id=acct.id, data=data, filename=image.name,
                             title=title, kind=kind, registration_number=registration,
                             licensed_sites=licensed, external_id=external_id)
        from registry.backscan import start_backscan

        job = start_backscan(s, obj.settings, acct.id, [work.id])
        click.echo(f"registered work {work.id} ({work.kind.value}) '{work.title}' for {acct.email}")
        if job is not None:
            click.echo(f"back-scan of {job.total} stored uploads queued (job {job.id})")
        if created:
            click.echo(f"created owner {acct.email}; notices for them stay blocked until `artwatch owners set` "
                       "gives their legal name, address and phone", err=True)


@works.command("backscan")
@click.argument("work_id", type=int)
@click.pass_obj
def works_backscan(obj: CliContext, work_id: int) -> None:
    """Check the uploads already stored against one work (queued for the workers).

    Registering queues this by itself; run it to resume a back-scan whose
    message was lost (it goes on from where it stopped) or to check again."""
    from registry.backscan import jobs_for_work, queue_batch, start_backscan
    from registry.service import PipelineError

    with session_scope(obj.sessions) as s:
        work = s.get(Work, work_id)
        if work is None:
            raise PipelineError(f"no work with id {work_id}")
        open_jobs = [p for p in jobs_for_work(s, work) if p.state in ("queued", "running")]
        if open_jobs:
            p = open_jobs[0]
            queue_batch(obj.settings, p.job_id)
            click.echo(f"back-scan job {p.job_id} queued again: checked {p.done:,} of {p.total:,}, found {p.found:,}")
            return
        job = start_backscan(s, obj.settings, work.owner_id, [work.id])
        if job is None:
            click.echo("no stored uploads to check")
        else:
            click.echo(f"back-scan of {job.total:,} stored uploads queued (job {job.id})")


@works.command("import")
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_obj
def works_import(obj: CliContext, manifest: Path) -> None:
    """Register every work in a JSONL file.

    Each line: {"id": "w0001", "file": "works/w0001.png", "kind": "logo",
    "owner": "o03", "title": "..."}; paths are relative to the file and owners
    are created by id. Lines that fail are reported and skipped; the exit
    status is 1 when any failed.
    """
    from matching.errors import ImageError
    from registry.service import PipelineError, ensure_owner, register_work

    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PipelineError(f"{manifest}: cannot read: {exc.strerror}") from None
    base = manifest.parent
    ok = failed = 0
    new_works: dict[int, list[int]] = {}  # owner id -> works registered now
    from workers.maintenance import DeferredMaintenance, queues_maintenance

    # With a worker to take it, maintenance that falls due is queued (once);
    # without one, it waits for the end of the import instead of running at
    # each doubling of the registry.
    queued = queues_maintenance(obj.settings)
    if not queued:
        obj.matcher.index.maintenance = DeferredMaintenance()
    with click.progressbar(list(enumerate(lines, 1)), label="importing works", file=sys.stderr) as bar:
        for lineno, line in bar:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "file" not in rec:
                    raise PipelineError("expected an object with at least a 'file' key")
                data = _read_image(base / str(rec["file"]))
                with session_scope(obj.sessions) as s:
                    owner = str(rec.get("owner") or "default")
                    acct = ensure_owner(s, external_id=owner, email=rec.get("owner_email"))
                    work = register_work(s, obj.blobs, obj.matcher, owner_id=acct.id, data=data,
                                  filename=Path(str(rec["file"])).name, title=str(rec.get("title", "")),
                                  kind=str(rec.get("kind", "artwork")),
                                  licensed_sites=rec.get("licensed_sites", []),
                                  external_id=str(rec["id"]) if "id" in rec else None)
                    new_works.setdefault(acct.id, []).append(work.id)
                ok += 1
            except (json.JSONDecodeError, PipelineError, ImageError, BlobStoreError) as exc:
                failed += 1
                click.echo(f"\n{manifest}:{lineno}: {exc}", err=True)
    if ok and queued:
        click.echo("the matching index is retrained by a worker (queue 'maintenance') when it is due", err=True)
    elif ok:
        # Train the local-feature vocabulary once on the whole registry (this
        # also writes its snapshot, so the next process starts from it).
        click.echo(f"training the matching index on the registry ({ok} new works)", err=True)
        obj.matcher.retrain()
    if new_works:
        # One back-scan per owner for the whole import (not one per work): each
        # stored upload is decoded and searched once, against all the new works.
        from registry.backscan import start_backscan

        with session_scope(obj.sessions) as s:
            jobs = [start_backscan(s, obj.settings, owner_id, ids) for owner_id, ids in new_works.items()]
            n = sum(1 for j in jobs if j is not None)
        if n:
            click.echo(f"back-scan of the stored uploads queued ({n} job{'s' if n > 1 else ''}, one per owner)",
                       err=True)
    click.echo(f"imported {ok} works, {failed} failed")
    if failed:
        sys.exit(1)


@works.command("list")
@click.option("--owner", default=None, help="Only this owner's works (email or id).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def works_list(obj: CliContext, owner: str | None, as_json: bool) -> None:
    """List registered works with their match counts."""
    with session_scope(obj.sessions) as s:
        q = (select(Work, Account, func.count(Match.id))
             .join(Account, Work.owner_id == Account.id)
             .outerjoin(Match, Match.work_id == Work.id)
             .group_by(Work.id, Account.id).order_by(Work.id))
        if owner:
            q = q.where((Account.email == owner) | (Account.external_id == owner))
        rows = s.execute(q).all()
        if not rows:
            click.echo("no works registered" if not as_json else "", nl=not as_json)
        for work, acct, n in rows:
            if as_json:
                click.echo(json.dumps({"id": work.id, "external_id": work.external_id, "title": work.title,
                                       "kind": work.kind.value, "owner": acct.email, "matches": n}))
            else:
                click.echo(f"{work.id:>6}  {work.kind.value:<7}  {n:>4} matches  {acct.email:<30}  {work.title}")


@works.command("remove")
@click.argument("work")
@click.option("--owner", default=None,
              help="Owner's email or id: WORK is then their own id for it (as given to --id or the manifest).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def works_remove(obj: CliContext, work: str, owner: str | None, yes: bool) -> None:
    """Remove a work, its matches and its index entries (asks first unless --yes).

    WORK is the number ``works list`` shows, or with --owner the owner's own
    id for the work (external ids are unique per owner only). Without --yes
    the answer is read from stdin, terminal or not; no answer (end of input)
    or any answer but yes removes nothing and exits 2."""
    from registry.service import PipelineError, find_work, remove_work

    with session_scope(obj.sessions) as s:
        if owner is None:
            if not work.isdigit():
                raise PipelineError(f"{work!r} is not a work number; to remove by your own id, add --owner")
            work_id = int(work)
        else:
            acct = s.scalar(select(Account).where((func.lower(Account.email) == owner.strip().lower())
                                                  | (Account.external_id == owner)))
            if acct is None:
                raise PipelineError(f"no owner {owner!r}")
            found = find_work(s, acct.id, work)
            if found is None:
                raise PipelineError(f"{acct.email} has no work with id {work!r}")
            work_id = found.id
        work_row = s.get(Work, work_id)
        if work_row is None:
            raise PipelineError(f"no work with id {work_id}")
        if not yes:
            matches = s.scalar(select(func.count(Match.id)).where(Match.work_id == work_id))
            try:
                confirmed = click.confirm(f"remove work {work_id} '{work_row.title}' and its {matches} matches?")
            except click.Abort:
                click.echo()  # end the unanswered prompt's line
                confirmed = False
            if not confirmed:
                raise PipelineError(f"work {work_id} not removed: not confirmed (answer y, or pass --yes)")
        remove_work(s, obj.matcher, work_id)
    click.echo(f"removed work {work_id}")


# ---------------------------------------------------------------- owners


@cli.group()
def owners() -> None:
    """Owners' profiles: the contact details notices need, and alert choice."""


@owners.command("set")
@click.argument("email")
@click.option("--name", "display_name", default=None, help="Name shown in the UI.")
@click.option("--legal-name", default=None, help="Name that signs notices.")
@click.option("--address", default=None, help="Postal address for notices.")
@click.option("--phone", default=None, help="Telephone number for notices.")
@click.option("--alerts", type=click.Choice(["instant", "digest", "off"]), default=None, help="Email alerts.")
@click.pass_obj
def owners_set(obj: CliContext, email: str, display_name: str | None, legal_name: str | None,
               address: str | None, phone: str | None, alerts: str | None) -> None:
    """Create an owner or update their profile."""
    from registry.service import ensure_owner

    with session_scope(obj.sessions) as s:
        acct = ensure_owner(s, email=email)
        for attr, value in (("display_name", display_name), ("legal_name", legal_name),
                            ("postal_address", address), ("phone", phone), ("alert_mode", alerts)):
            if value is not None:
                setattr(acct, attr, value)
        missing = [label for label, v in (("--legal-name", acct.legal_name), ("--address", acct.postal_address),
                                          ("--phone", acct.phone)) if not v]
        click.echo(f"owner {acct.id} {acct.email}: alerts {acct.alert_mode}")
        if missing:
            click.echo("notices for this owner stay blocked until these are set: " + ", ".join(missing))


@owners.command("list")
@click.pass_obj
def owners_list(obj: CliContext) -> None:
    """List owners with their number of works."""
    with session_scope(obj.sessions) as s:
        rows = s.execute(select(Account, func.count(Work.id)).outerjoin(Work, Work.owner_id == Account.id)
                         .group_by(Account.id).order_by(Account.id)).all()
        for acct, n in rows:
            click.echo(f"{acct.id:>5}  {acct.email:<32} {acct.role.value:<8} {n:>4} works  alerts {acct.alert_mode}")


# ---------------------------------------------------------------- worker, beat, crawl


_ROLES = {
    # CPU workers: crawling, fetching, analysis (decode, hashes, local features), notices,
    # and the registry's maintenance (retrains, snapshots; one at a time cluster-wide).
    "cpu": ("crawl,fetch,analyse,notify,maintenance", "prefork"),
    # GPU workers: batched CLIP embedding; one thread per in-flight image.
    "gpu": ("embed", "threads"),
    # Everything in one worker (the embedded default, small installs).
    "all": ("crawl,fetch,analyse,embed,notify,maintenance", "prefork"),
}


@cli.command()
@click.option("--role", type=click.Choice(sorted(_ROLES)), default="all", show_default=True,
              help="Which queues and pool to use: cpu, gpu (batched embedding), or all.")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to consume (default: by role).")
@click.option("-c", "--concurrency", type=int, default=None,
              help="Worker processes, or threads for the gpu role (default: [workers.concurrency]).")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default=None,
              help="Execution pool (default: by role).")
@click.option("-n", "--hostname", default=None, help="Worker node name (default: artwatch@HOST).")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics on this port (default: workers.metrics_port; 0 = off).")
@click.pass_obj
def worker(obj: CliContext, role: str, queues: str | None, concurrency: int | None, pool: str | None,
           hostname: str | None, metrics_port: int | None) -> None:
    """Run a Celery worker process (CPU or GPU, by the queues it consumes)."""
    import os

    from workers.runtime import set_runtime_settings

    settings = obj.settings
    if settings.matching.allocator == "jemalloc":
        from matching.allocator import reexec_with_jemalloc

        reexec_with_jemalloc()  # first: the restart repeats everything before it
    role_queues, role_pool = _ROLES[role]
    queue_list = [q.strip() for q in (queues or role_queues).split(",") if q.strip()]
    pool = pool or role_pool
    if concurrency is None:
        concurrency = settings.workers.concurrency.get("gpu" if role == "gpu" else "cpu", 0) or (os.cpu_count() or 1)
    port = settings.workers.metrics_port if metrics_port is None else metrics_port
    if port:
        # Before anything imports prometheus_client (it picks its value class
        # at import): prefork children then write their samples to
        # per-process files in this folder, which the exporter sums.
        import shutil

        folder = settings.data_dir.resolve() / "metrics" / f"{hostname or role}-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from workers.broker import check_broker

    check_database(obj.db)
    app = _configured_app(settings)
    check_broker(app, settings)
    set_runtime_settings(settings)
    from workers.app import worker_prefetch

    app.conf.worker_prefetch_multiplier = worker_prefetch(settings, queue_list)
    if settings.embedded_broker:
        from workers.broker import default_worker_name, start_heartbeat

        start_heartbeat(settings, hostname or default_worker_name(), queue_list)
    if (role == "gpu" or "embed" in queue_list) and pool in ("threads", "solo") and settings.workers.embed_stage:
        # Load the model before consuming: the first batch must not wait for
        # it (and with it the messages' visibility timeout).
        from workers.batching import get_clip

        clip = get_clip(settings)
        click.echo(f"embedding model ready on {clip.device} "
                   f"({'float32' if clip.autocast is None else settings.workers.embed_dtype})", err=True)
    if port:
        from workers.metrics import start_exporter

        start_exporter(app, settings, port)
        click.echo(f"metrics: http://0.0.0.0:{port}/metrics", err=True)
    argv = ["worker", "-Q", ",".join(queue_list), "-c", str(concurrency), "-P", pool,
            "--without-gossip", "--without-mingle", "-l", settings.log_level]
    if not settings.embedded_broker:
        argv.append("-E")  # task events for Flower
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


@cli.command()
@click.pass_obj
def beat(obj: CliContext) -> None:
    """Run Celery beat: polls due sources every minute and sends digests."""
    from workers.broker import check_broker

    app = _configured_app(obj.settings)
    check_broker(app, obj.settings)
    app.start(["beat", "-l", obj.settings.log_level])


def _configured_app(settings: Settings) -> Any:
    from workers.tasks import configured_app

    return configured_app(settings)


@cli.command()
@click.option("--source", "source_names", multiple=True, help="Only this source (repeatable).")
@click.option("--inline", is_flag=True, help="Poll here instead of queueing a crawl task per source.")
@click.option("--stream", "stream_name", default=None, help="Run one streaming source as a long-lived consumer.")
@click.pass_obj
def crawl(obj: CliContext, source_names: tuple[str, ...], inline: bool, stream_name: str | None) -> None:
    """Crawl sources now: queue a crawl task per enabled source."""
    from workers.broker import check_broker

    app = _configured_app(obj.settings)
    check_broker(app, obj.settings)
    from workers import tasks

    if stream_name:
        _run_stream(obj, stream_name)
        return
    with session_scope(obj.sessions) as s:
        q = select(Source).where(Source.enabled.is_(True))
        if source_names:
            q = q.where(Source.name.in_(source_names))
        sources = [(src.id, src.name) for src in s.scalars(q)]
    if not sources:
        click.echo("no enabled sources: add one with `artwatch sources add`", err=True)
        return
    for sid, name in sources:
        if inline:
            n = tasks.crawl_source.apply(args=(sid,)).get()
            click.echo(f"{name}: {n} new uploads queued for fetching")
        else:
            tasks.crawl_source.delay(sid)
            click.echo(f"{name}: crawl queued")


def _run_stream(obj: CliContext, name: str) -> None:
    import threading

    from crawler.limits import host_limits
    from crawler.service import build_client
    from crawler.stream import run_stream
    from registry.service import PipelineError
    from workers import tasks

    with session_scope(obj.sessions) as s:
        src = s.scalar(select(Source).where(Source.name == name))
        if src is None:
            raise PipelineError(f"no source named {name!r}")
        sid = src.id
    from config.logging import setup_logging

    setup_logging(obj.settings, level="DEBUG" if obj.verbose else None)  # a service: its logs are its output
    stop = threading.Event()
    click.echo(f"streaming {name}; Ctrl-C to stop", err=True)
    with build_client(obj.settings.crawler, host_limits(obj.settings)) as client:
        try:
            run_stream(obj.sessions, sid, client, tasks.fetch_upload.delay, stop)
        except KeyboardInterrupt:
            stop.set()


# ---------------------------------------------------------------- status


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj: CliContext, as_json: bool) -> None:
    """Show counts, sources (last success, last error, backlog), queues and workers."""
    from storage.models import DeadLetter
    from workers.broker import in_flight, queue_depths, worker_liveness

    report: dict[str, Any] = {}
    with session_scope(obj.sessions) as s:
        report["works"] = s.scalar(select(func.count(Work.id)))
        report["uploads"] = {st.value: s.scalar(select(func.count(Upload.id)).where(Upload.status == st))
                             for st in UploadStatus}
        # Pending uploads the stalled-upload sweep queued again (workers.stalled): their first
        # message was lost, or their stage is not being consumed.
        report["requeued"] = s.scalar(select(func.count(Upload.id)).where(
            Upload.status == UploadStatus.PENDING, Upload.redispatches > 0))
        report["matches"] = s.scalar(select(func.count(Match.id)))
        report["notices"] = {st.value: n for st, n in s.execute(
            select(Notice.state, func.count(Notice.id)).group_by(Notice.state)).all()}
        backlog = dict(s.execute(select(Upload.source_id, func.count(Upload.id))
                                 .where(Upload.status == UploadStatus.PENDING)
                                 .group_by(Upload.source_id)).all())
        report["sources"] = [
            {"name": src.name, "kind": src.kind, "enabled": src.enabled,
             "last_success": src.last_success_at.isoformat() if src.last_success_at else None,
             "last_error": src.last_error, "backlog": backlog.get(src.id, 0)}
            for src in s.scalars(select(Source).order_by(Source.name))
        ]
    app = _configured_app(obj.settings)
    report["queues"] = queue_depths(app, obj.settings)
    report["in_flight"] = in_flight(app, obj.settings)
    report["workers"] = worker_liveness(app, obj.settings)
    with session_scope(obj.sessions) as s:
        report["dead_letters"] = s.scalar(select(func.count(DeadLetter.id)).where(DeadLetter.replayed_at.is_(None)))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    up = report["uploads"]
    click.echo(f"works: {report['works']}   uploads: {sum(up.values())} "
               f"({up['pending']} pending"
               + (f", {report['requeued']} of them re-queued after a lost message" if report["requeued"] else "")
               + f", {up['analysed']} analysed, {up['failed']} failed)   "
               f"matches: {report['matches']}")
    waiting = sum(
        n for st, n in report["notices"].items() if st in (NoticeState.DRAFT.value, NoticeState.IN_REVIEW.value)
    )
    click.echo(f"notices: {waiting} waiting for review; " +
               ", ".join(f"{k} {v}" for k, v in sorted(report["notices"].items())))
    from crawler.health import failure_hint

    click.echo("sources:" if report["sources"] else "sources: none")
    for src in report["sources"]:
        click.echo(f"  {src['name']:<20} {src['kind']:<10} last success {src['last_success'] or 'never'}; "
                   f"backlog {src['backlog']}" + (f"; last error: {src['last_error']}" if src["last_error"] else ""))
        if failure_hint(src["last_error"]):
            click.echo(f"    {failure_hint(src['last_error'])}")
    click.echo("queues: " + ", ".join(f"{q} {n if n is not None else '?'}" for q, n in report["queues"].items())
               + (f"; in flight {report['in_flight']}" if report["in_flight"] is not None else "")
               + (f"; dead letters {report['dead_letters']} (`artwatch deadletters list`)"
                  if report["dead_letters"] else ""))
    click.echo("workers: " + (", ".join(report["workers"]) if report["workers"] else "none answering"))


# ---------------------------------------------------------------- run


@cli.command()
@click.option("--demo", is_flag=True, help="Register the bundled sample works and crawl the bundled demo site.")
@click.option("--web/--no-web", default=True, show_default=True, help="Serve the web UI after the run.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Give up waiting after this many seconds.")
@click.pass_context
def run(ctx: click.Context, demo: bool, web: bool, timeout: float) -> None:
    """Run the whole job on this machine: crawl, analyse, match, draft notices."""
    from workers.run import run_job

    obj: CliContext = ctx.obj

    def serve_web() -> None:
        # The mounted `web` command (webapp.cli, through _LAZY like every mounted group).
        root = ctx.find_root()
        command = root.command.get_command(root, "web") if isinstance(root.command, click.Group) else None
        if command is None:
            raise click.ClickException("the web app is not installed: run with --no-web")
        ctx.invoke(command, host=None, port=None, quiet=True)

    run_job(obj.settings, demo=demo, web=web, timeout=timeout, echo=click.echo, serve_web=serve_web if web else None)


# ---------------------------------------------------------------- mounted groups

# Subcommands owned by other packages, imported only when they run: importing
# them all (the web app, the matching engine, the crawler) is what made every
# command slow to start. name -> (module, attribute, one-line help for --help).
_LAZY: dict[str, tuple[str, str, str]] = {
    "sources": ("crawler.cli", "sources_group", "Manage the sites artwatch crawls."),
    "notices": ("notices.cli", "notices_group", "Review, send and follow up takedown notices."),
    "scan": ("matching.cli", "scan", "Analyse every upload in a manifest against the registered works."),
    "calibrate": ("matching.cli", "calibrate", "Set the match threshold from the registry itself."),
    "index": ("registry.cli", "index_group", "Maintain the matching index."),
    "web": ("webapp.cli", "web_command", "Serve the web app and the JSON API."),
    "users": ("webapp.cli", "users_group", "Manage accounts (owners, reviewers, admins) and API tokens."),
    "deadletters": ("workers.deadletters", "deadletters_group", "Tasks that failed after all their retries."),
}


def main() -> None:
    cli(prog_name="artwatch")
