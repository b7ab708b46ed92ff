"""Matching commands: ``scan`` and ``calibrate`` (``index rebuild`` is the registry's: ``registry.cli``).

Mounted into the main ``artwatch`` CLI by ``workers/cli.py`` (or with
:func:`register_commands`). They take their settings from ``ctx.obj.settings``
when run there, and load them from the environment otherwise.

``scan`` runs :meth:`matching.Engine.analyse`, the very call the workers make,
on every upload of a manifest, in ``--workers`` processes (one engine each),
and writes one JSON line per candidate::

    {"upload": "u00001", "work": "w0001", "score": 0.93, "match": true}

``work`` is the work's external id (its database id when it has none).
Uploads that cannot be decoded (or whose analysis fails in any other way)
produce no line and are named and counted on stderr; the scan goes on.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import click

from config.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

__all__ = ["calibrate", "register_commands", "scan"]

log = logging.getLogger(__name__)


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_object(object)
    settings = getattr(obj, "settings", None)
    if isinstance(settings, Settings):
        return settings
    from config.settings import load_settings

    return load_settings()


def _shared(ctx: click.Context) -> tuple[Any, Any]:
    """The sessionmaker and blob store: the ``artwatch`` command line's (its one
    composition root, ``registry.root.Services``, through ``ctx.obj``), or, when
    these commands are mounted elsewhere (:func:`register_commands`), opened here
    from the settings."""
    obj = ctx.find_object(object)
    if hasattr(obj, "sessions") and hasattr(obj, "blobs"):
        return obj.sessions, obj.blobs
    from storage.blobs import build_blob_store
    from storage.db import make_engine, make_sessionmaker

    settings = _settings(ctx)
    return make_sessionmaker(make_engine(settings.resolved_database_url())), build_blob_store(settings)


def _without_embedder(settings: Settings) -> Settings:
    matching = settings.matching.model_copy(update={"use_embedder": False, "descriptor": ""})
    return settings.model_copy(update={"matching": matching})


# ------------------------------------------------------------------ scan


class _Progress:
    """A progress bar on a terminal; otherwise a line on stderr every 10%."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.t0 = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._bar: Any = None
        self._next = 0.1

    def __enter__(self) -> Self:
        if self._tty:
            self._bar = click.progressbar(length=self.total, label=self.label, file=sys.stderr,
                                          show_pos=True, show_eta=True).__enter__()
        return self

    def step(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self.total and self.done / self.total >= self._next:
            rate = self.done / max(time.monotonic() - self.t0, 1e-9)
            click.echo(f"{self.label}: {self.done}/{self.total} ({100 * self.done // self.total}%), "
                       f"{rate:.1f}/s", err=True)
            while self._next <= self.done / self.total:
                self._next += 0.1

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


_engine: Any = None
#: Why this process has no engine: a pool initializer that raised would be
#: restarted by multiprocessing forever, so the error is kept and reported.
_init_error: str | None = None


def _init_worker(settings: Settings) -> None:
    global _engine, _init_error
    from matching import build_engine
    from matching.errors import MatchingError

    try:
        _engine = build_engine(settings)
    except (MatchingError, ValueError, OSError) as exc:
        _init_error = f"{type(exc).__name__}: {exc}"


def _engine_error() -> str | None:
    return _init_error


def _analyse_one(item: tuple[str, str]) -> tuple[str, list[tuple[int, float, bool]], str | None]:
    """(upload id, [(work_id, score, match)], error) for one manifest entry."""
    from matching.errors import ImageError

    upload_id, path = item
    try:
        data = Path(path).read_bytes()
        cands = _engine.analyse(data, name=path)
    except ImageError as exc:
        return upload_id, [], str(exc)
    except OSError as exc:
        return upload_id, [], f"{path}: cannot read: {exc.strerror}"
    except Exception as exc:
        log.exception("scan: %s failed", path)
        return upload_id, [], f"{path}: analysis failed ({type(exc).__name__}: {str(exc)[:200]})"
    return upload_id, [(c.work_id, float(c.score), bool(c.match)) for c in cands], None


def _read_manifest(manifest: Path) -> list[tuple[str, str]]:
    base = manifest.parent
    items = []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise click.ClickException(f"{manifest}: cannot read: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            items.append((str(rec["id"]), str(base / rec["file"])))
        except (ValueError, KeyError, TypeError):
            raise click.ClickException(
                f'{manifest}:{n}: expected {{"id": ..., "file": ...}}, got {line[:80]!r}'
            ) from None
    return items


def _work_names(sessions: sessionmaker[Session]) -> dict[int, str]:
    """The name each work has in the predictions file.

    A work's external id (the manifest's ``id``), else its database id. External
    ids are unique per owner only, so an id that two owners both use is written
    as ``<owner>/<id>`` (the owner's external id, else their email): a
    prediction never names a work that could be another owner's. A benchmark
    registry, whose ids are unique, keeps the plain ``"work": "w0001"`` format.
    """
    from collections import Counter

    from sqlalchemy import select

    from storage.models import Account, Work

    with sessions() as session:
        rows = session.execute(
            select(Work.id, Work.external_id, Account.external_id, Account.email)
            .join(Account, Work.owner_id == Account.id)
        ).all()
    shared = Counter(ext for _wid, ext, _o, _e in rows if ext)
    names = {}
    for wid, ext, owner_ext, email in rows:
        if not ext:
            names[wid] = str(wid)
        elif shared[ext] > 1:
            names[wid] = f"{owner_ext or email}/{ext}"
        else:
            names[wid] = ext
    return names


def _results(items: list[tuple[str, str]], settings: Settings, workers: int) -> Iterator[Any]:
    if workers <= 1:
        _init_worker(settings)
        if _init_error is not None:
            raise click.ClickException(f"cannot build the matching engine: {_init_error}")
        yield from map(_analyse_one, items)
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one process per core; no oversubscription
    from matching.allocator import jemalloc_env, running_jemalloc

    preload = os.environ.get("LD_PRELOAD")
    if settings.matching.allocator == "jemalloc":
        env = jemalloc_env(os.environ)
        if env is None:
            click.echo("warning: jemalloc is not installed (apt-get install libjemalloc2); "
                       "the scan runs on the system malloc", err=True)
        else:
            os.environ["LD_PRELOAD"] = env["LD_PRELOAD"]  # read by each worker as it is spawned
    # spawn: each worker starts clean and builds its own engine (no state shared across fork).
    ctx = mp.get_context("spawn")
    try:
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(settings,))
    finally:  # only the pool's processes, not whatever this process starts later
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload
    with pool:
        error = pool.apply(_engine_error)
        if error is not None:
            raise click.ClickException(f"cannot build the matching engine: {error}")
        malloc = "jemalloc" if pool.apply(running_jemalloc) else "the system malloc"
        click.echo(f"scan: {workers} worker processes on {malloc}", err=True)
        yield from pool.imap(_analyse_one, items, chunksize=2)


@click.command("scan")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help='JSONL of uploads: {"id": ..., "file": path relative to the manifest}.')
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the predictions (JSONL, one line per candidate).")
@click.option("--no-embedder", is_flag=True,
              help="Skip CLIP and the copy-detection descriptor: match on local features and PDQ only.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes analysing uploads (one engine each).")
@click.pass_context
def scan(ctx: click.Context, manifest: Path, out_path: Path, no_embedder: bool, workers: int) -> None:
    """Analyse every upload in a manifest against the registered works."""
    settings = _settings(ctx)
    if no_embedder:
        settings = _without_embedder(settings)
    items = _read_manifest(manifest)
    names = _work_names(_shared(ctx)[0])
    if not names:
        click.echo("warning: no works are registered; every upload will have no candidates", err=True)
    errors = candidates = matched = 0
    t0 = time.monotonic()
    tmp = out_path.with_name(out_path.name + ".part")
    with tmp.open("w", encoding="utf-8") as out, _Progress(len(items), "scanning") as progress:
        for upload_id, cands, error in _results(items, settings, workers):
            if error is not None:
                errors += 1
                click.echo(f"skipped: {error}", err=True)
            for work_id, score, match in cands:
                name = names.get(work_id)
                if name is None:  # removed from the database since it was indexed
                    continue
                out.write(json.dumps({"upload": upload_id, "work": name, "score": round(score, 6),
                                      "match": match}) + "\n")
                candidates += 1
                matched += int(match)
            progress.step()
    tmp.replace(out_path)
    took = time.monotonic() - t0
    click.echo(
        f"scanned {len(items)} uploads in {took:.1f}s ({len(items) / max(took, 1e-9):.1f}/s, {workers} workers): "
        f"{candidates} candidates, {matched} matches, {errors} unreadable",
        err=True,
    )


# ------------------------------------------------------------- calibrate


@click.command("calibrate")
@click.option("--target-precision", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.99,
              show_default=True, help="Precision the match threshold is set for.")
@click.option("--dry-run", is_flag=True, help="Fit and print the model, but keep the one in use.")
@click.option("--reset", is_flag=True,
              help="Remove the calibration: every engine goes back to the built-in score and threshold.")
@click.pass_context
def calibrate(ctx: click.Context, target_precision: float, dry_run: bool, reset: bool) -> None:
    """Set the match threshold from the registry itself.

    Makes transformed copies of the registered works and unrelated images,
    measures the score distributions and writes the threshold that gives the
    target precision (see matching.calibrate). The fit finds more copies than
    the built-in score but, on the held-out benchmark, let more look-alikes
    through (docs/benchmarks.md): try it with --dry-run, and --reset returns
    to the built-in score.
    """
    settings = _settings(ctx)
    if reset:
        if dry_run:
            raise click.UsageError("--reset and --dry-run do not go together")
        _reset_calibration(ctx, settings)
        return
    try:
        from matching.calibrate import run_calibration
    except ImportError:
        raise click.ClickException("calibration is not available in this build (matching.calibrate missing)") from None
    from storage.blobs import BlobStoreError

    click.echo(f"calibrating on the registered works for precision {target_precision}"
               f"{' (dry run: nothing is written)' if dry_run else ''}...", err=True)
    try:
        sessions, blobs = _shared(ctx)
        result = run_calibration(settings, sessions=sessions, blobs=blobs, target_precision=target_precision,
                                 write=not dry_run)
    except (ValueError, BlobStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    to_json = getattr(result, "to_json", None)
    click.echo(json.dumps(to_json()) if callable(to_json) else str(result))
    wrong = int(getattr(result, "negatives", 0))
    if wrong:
        # Rule of three: no error among n pairs bounds the rate below 3/n at 95 % confidence, no lower.
        click.echo(f"note: the threshold rests on {wrong} wrong pairs of synthetic images, which cannot tell a "
                   f"false-positive rate of {min(1.0, 3 / wrong):.1%} from zero; on the held-out benchmark's "
                   "look-alikes such a fit let more through than the built-in score (docs/benchmarks.md, "
                   "\"Held-out split\")"
                   f"{'' if dry_run else '; artwatch calibrate --reset returns to the built-in score'}", err=True)


def _reset_calibration(ctx: click.Context, settings: Settings) -> None:
    from storage.documents import CALIBRATION, build_document_store

    obj = ctx.find_object(object)
    documents = obj.documents if hasattr(obj, "documents") else build_document_store(settings)
    where = documents.location(CALIBRATION)
    if documents.version(CALIBRATION) is None:
        click.echo(f"no calibration at {where}: the built-in score is in use", err=True)
        return
    documents.delete(CALIBRATION)
    click.echo(f"removed the calibration at {where}: every engine now uses the built-in score and threshold",
               err=True)


def register_commands(group: click.Group) -> None:
    """Mount ``scan`` and ``calibrate`` on a click group (``index`` is ``registry.cli``'s)."""
    for cmd in (scan, calibrate):
        group.add_command(cmd)
