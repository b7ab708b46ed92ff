"""Registering, importing and removing works from the web, through the shared pipeline.

The CLI and the web call the same :func:`registry.service.register_work` and
:func:`registry.service.remove_work`; this module adds what only the web needs:
input checks with messages fit for a form or a problem document, the engine
lock, and import jobs with progress.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from sqlalchemy.orm import Session

from notices.images import ACCEPTED_TYPES, sniff
from storage.db import session_scope
from storage.models import WebJob, Work, WorkKind
from webapp.deps import WebContext
from webapp.errors import InvalidInput, PayloadTooLarge, UnsupportedImage

__all__ = [
    "WorkForm",
    "check_image",
    "edit",
    "parse_licensed",
    "register",
    "remove",
    "spool_uploads",
    "start_import",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkForm:
    title: str
    kind: str
    registration_number: str = ""
    licensed_sites: tuple[str, ...] = ()

    def validated(self, filename: str) -> WorkForm:
        title = " ".join(self.title.split())[:300] or PurePath(filename).stem[:300]
        if self.kind not in {k.value for k in WorkKind}:
            raise InvalidInput(f"kind must be 'logo' or 'artwork', not {self.kind!r}")
        reg = self.registration_number.strip()
        if len(reg) > 100:
            raise InvalidInput("the registration number is longer than 100 characters")
        return WorkForm(title, self.kind, reg, self.licensed_sites)


_SITE = re.compile(r"^(https?://\S+|@?[A-Za-z0-9_.-]+(@[A-Za-z0-9.-]+)?)$")


def parse_licensed(text: str | Sequence[str]) -> tuple[str, ...]:
    """Hosts, account handles or URL prefixes, one per line or comma; checked and de-duplicated."""
    items = re.split(r"[\n,]+", text) if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if not _SITE.match(item) or len(item) > 500:
            raise InvalidInput(
                f"licensed site {item[:80]!r} is not a host (example.com), "
                "a handle (@shop) or a URL (https://site/@shop)"
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def check_image(data: bytes, filename: str) -> str:
    kind = sniff(data)
    if kind not in ACCEPTED_TYPES:
        found = kind.upper() if kind else "not an image we recognise"
        raise UnsupportedImage(
            f"{filename or 'the file'}: {found}; upload a PNG, JPEG, WebP or SVG file"
        )
    return kind


def register(
    ctx: WebContext, session: Session, owner_id: int, data: bytes, filename: str, form: WorkForm,
    *, backscan: bool = True,
) -> Work:
    """Register one work for the owner; a bad image raises UnsupportedImage with the reason.

    ``backscan`` also starts the check of the uploads already stored
    (:func:`registry.backscan.start_backscan`, queued once the session commits);
    an import passes False and starts one back-scan for all its works at the end."""
    from registry.service import PipelineError, register_work

    check_image(data, filename)
    form = form.validated(filename)
    try:
        from matching.errors import ImageError
    except ImportError:  # pragma: no cover - matching not installed
        ImageError = ValueError  # type: ignore[misc,assignment]
    try:
        with ctx.engine_lock:
            work = register_work(
                session,
                ctx.blobs,
                ctx.engine,
                owner_id=owner_id,
                data=data,
                filename=PurePath(filename).name[:300],
                title=form.title,
                kind=form.kind,
                registration_number=form.registration_number,
                licensed_sites=form.licensed_sites,
            )
    except ImageError as exc:
        raise UnsupportedImage(str(exc)) from None
    except PipelineError as exc:
        raise InvalidInput(str(exc)) from None
    if backscan:
        from registry.backscan import start_backscan

        start_backscan(session, ctx.settings, owner_id, [work.id])
    return work


def edit(ctx: WebContext, session: Session, work: Work, form: WorkForm, actor: str) -> dict[str, Any]:
    """Change a work's title, kind and licensed sites; returns what changed (also in the audit trail).

    A new kind is written to the matching index too (the work is registered
    again from its stored image: the index keeps the kind with the work's
    features). Matches already found keep their status; the new licensed
    sites apply to matches found from now on."""
    from storage.models import AuditEvent

    form = form.validated(work.filename)
    changes: dict[str, Any] = {}
    if form.title != work.title:
        changes["title"] = [work.title, form.title]
    if form.kind != work.kind.value:
        changes["kind"] = [work.kind.value, form.kind]
    if list(form.licensed_sites) != list(work.licensed_sites or []):
        changes["licensed_sites"] = [list(work.licensed_sites or []), list(form.licensed_sites)]
    if not changes:
        return changes
    work.title = form.title
    work.licensed_sites = list(form.licensed_sites)
    if "kind" in changes:
        from matching import WorkRef

        work.kind = WorkKind(form.kind)
        with ctx.engine_lock:
            ctx.engine.register(WorkRef(work.id, work.owner_id, form.kind), ctx.blobs.get(work.blob_sha256),
                                name=work.filename)
    session.add(AuditEvent(actor=actor[:320], action="work_edited", entity="work", entity_id=work.id,
                           detail=changes))
    session.flush()
    return changes


def remove(ctx: WebContext, session: Session, work: Work) -> None:
    from registry.service import remove_work

    with ctx.engine_lock:
        remove_work(session, ctx.engine, work.id, owner_id=work.owner_id)


def spool_uploads(files: Sequence[Any], limit: int, parent: Path) -> tuple[Path, list[tuple[str, Path]]]:
    """Copy uploaded files into a fresh private folder under ``parent``, checking each against ``limit``.

    An import can carry hundreds of files; holding their bytes until the job
    reaches them would keep the whole request in memory. The caller owns the
    folder (``start_import`` deletes it when the job ends). Blocking file I/O:
    call it off the event loop.
    """
    if not files:
        raise InvalidInput("choose one or more image files to import")
    parent.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix="import-", dir=parent))
    items: list[tuple[str, Path]] = []
    try:
        for i, upload in enumerate(files, 1):
            filename = getattr(upload, "filename", "") or ""
            if not filename:
                raise InvalidInput("choose an image file to upload")
            path = spool / f"{i:06d}"
            with path.open("wb") as out:
                size = 0
                while chunk := upload.file.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"{filename}: the file is larger than the {limit // 1_000_000} MB limit"
                        )
                    out.write(chunk)
            if size == 0:
                raise InvalidInput(f"the file {filename!r} is empty")
            items.append((filename, path))
    except BaseException:
        shutil.rmtree(spool, ignore_errors=True)
        raise
    return spool, items


def start_import(
    ctx: WebContext,
    session: Session,
    owner_id: int,
    files: Sequence[tuple[str, Path]],
    kind: str,
    licensed_sites: tuple[str, ...] = (),
    *,
    spool: Path | None = None,
) -> WebJob:
    """Create an import job and register the files in a background thread.

    ``files`` are (name, path) pairs; each file is read only when the job
    reaches it and deleted after, and ``spool`` (their folder) is removed when
    the job ends. The job row records progress (done of total) and one
    message per file that failed, so the page can poll it. Files are checked
    one by one: a bad file is reported and skipped, the rest still register.
    """
    if not files:
        raise InvalidInput("choose one or more image files to import")
    WorkForm("x", kind).validated("x")
    job = WebJob(
        owner_id=owner_id, kind="import", state="queued", total=len(files), done=0, errors=[]
    )
    session.add(job)
    session.commit()
    job_id = job.id

    def run() -> None:
        try:
            _run_import(ctx, job_id, owner_id, list(files), kind, licensed_sites)
        finally:
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)

    threading.Thread(target=run, name=f"import-{job_id}", daemon=True).start()
    return job


def _run_import(
    ctx: WebContext,
    job_id: int,
    owner_id: int,
    files: list[tuple[str, Path]],
    kind: str,
    licensed_sites: tuple[str, ...],
) -> None:
    errors: list[Any] = []
    registered: list[int] = []
    try:
        with session_scope(ctx.sessions) as s:
            job = s.get(WebJob, job_id)
            if job is not None:
                job.state = "running"
        for index, (filename, path) in enumerate(files, start=1):
            try:
                data = path.read_bytes()
                path.unlink()
                with session_scope(ctx.sessions) as s:
                    work = register(
                        ctx, s, owner_id, data, filename, WorkForm("", kind, "", licensed_sites), backscan=False
                    )
                    registered.append(work.id)
            except Exception as exc:  # noqa: BLE001 - reported per file, the import goes on
                detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
                errors.append({"file": filename, "error": detail})
            with session_scope(ctx.sessions) as s:
                job = s.get(WebJob, job_id)
                if job is None:
                    return
                job.done = index
                job.errors = list(errors)
        final = "done"
        if registered:
            # One back-scan for the whole import: each stored upload is decoded
            # and searched once, restricted to all the new works together.
            from registry.backscan import start_backscan

            with session_scope(ctx.sessions) as s:
                start_backscan(s, ctx.settings, owner_id, registered)
    except Exception:
        log.exception("import job %s failed", job_id)
        final = "failed"
    with session_scope(ctx.sessions) as s:
        job = s.get(WebJob, job_id)
        if job is not None:
            job.state = final
            job.finished_at = datetime.now(UTC)
