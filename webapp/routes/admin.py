"""Admin pages: crawl sources, user accounts and the host directory."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from storage.documents import HOSTS_OVERRIDE, DocumentStore, build_document_store
from storage.models import Account, Role, Source
from webapp.deps import DB, csrf_protect, get_ctx, require_page_role
from webapp.errors import InvalidInput, NotFound, WebError
from webapp.security import hash_password

router = APIRouter(include_in_schema=False, prefix="/admin", dependencies=[Depends(csrf_protect)])

ADMIN = require_page_role(Role.ADMIN)
HOSTS_OVERRIDE_NAME = HOSTS_OVERRIDE


def source_kinds() -> tuple[str, ...]:
    from crawler.service import SOURCE_KINDS

    return tuple(SOURCE_KINDS)


def bundled_hosts_file(settings: Settings) -> Path:
    """The configured (or bundled) host directory that the admin's override amends."""
    from notices.hosts import DEFAULT_HOSTS_FILE

    return Path(settings.notices.hosts_file) if settings.notices.hosts_file else DEFAULT_HOSTS_FILE


def effective_host_directory(settings: Settings, documents: DocumentStore | None = None) -> Any:
    """The bundled directory with the override's entries replacing (or adding) entries by key.

    The override comes from ``documents``, by default the store that
    ``settings.shared.kind`` names. Raises notices.errors.HostDirectoryError
    naming the file (or document) and entry at fault.
    """
    from notices.hosts import HostDirectory, load_host_directory, parse_host_directory

    if documents is None:
        documents = build_document_store(settings)
    entries = dict(load_host_directory(path=bundled_hosts_file(settings)).entries)
    doc = documents.get(HOSTS_OVERRIDE_NAME)
    if doc is not None:
        entries.update(parse_host_directory(doc.data.decode("utf-8"), documents.location(HOSTS_OVERRIDE_NAME)).entries)
    return HostDirectory(list(entries.values()))


def _documents(request: Request) -> DocumentStore:
    ctx = get_ctx(request)
    return build_document_store(ctx.settings, ctx.sessions)


def _sources_page(
    request: Request, session: Session, error: str = "", status: int = 200
) -> Response:
    from webapp.listing import ListQuery, source_page

    kinds = source_kinds()
    page = source_page(session, ListQuery.parse(request.query_params, sort="date"))
    filters = {
        "status": [("", "any"), ("enabled", "enabled"), ("disabled", "disabled"), ("failing", "failing")],
        "kind": [("", "any kind"), *((k, k) for k in kinds)],
    }
    return get_ctx(request).templates.TemplateResponse(
        request,
        "admin_sources.html",
        {"sources": page.rows, "page": page, "filters": filters, "kinds": kinds, "error": error},
        status_code=status,
    )


@router.get("/sources", response_class=HTMLResponse)
def sources(request: Request, account: Account = ADMIN, session: Session = DB) -> Response:
    return _sources_page(request, session)


@router.post("/sources", response_class=HTMLResponse)
def add_source(
    request: Request,
    account: Account = ADMIN,
    session: Session = DB,
    name: str = Form(""),
    kind: str = Form(""),
    url: str = Form(""),
    params: str = Form(""),
    poll_seconds: int = Form(300),
) -> Response:
    try:
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidInput("give the source a name of 1 to 100 characters")
        if kind not in source_kinds():
            raise InvalidInput(
                f"unknown source kind {kind!r}; choose one of {', '.join(source_kinds())}"
            )
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("the source URL must be an http(s) URL with a host")
        try:
            parsed = json.loads(params) if params.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"params are not valid JSON: {exc.msg} (line {exc.lineno})"
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidInput("params must be a JSON object")
        if not 10 <= poll_seconds <= 86400:
            raise InvalidInput("poll interval must be between 10 seconds and one day")
        if session.scalar(select(Source).where(Source.name == name)) is not None:
            raise InvalidInput(f"a source named {name!r} already exists")
    except WebError as exc:
        return _sources_page(request, session, exc.detail, exc.status)
    session.add(
        Source(name=name, kind=kind, url=url.strip(), params=parsed, poll_seconds=poll_seconds)
    )
    return RedirectResponse("/admin/sources", status_code=303)


def _source(session: Session, source_id: int) -> Source:
    source = session.get(Source, source_id)
    if source is None:
        raise NotFound(f"no source with id {source_id}")
    return source


@router.post("/sources/{source_id}/toggle")
def toggle_source(source_id: int, account: Account = ADMIN, session: Session = DB) -> Response:
    source = _source(session, source_id)
    source.enabled = not source.enabled
    return RedirectResponse("/admin/sources", status_code=303)


@router.post("/sources/{source_id}/delete")
def delete_source(source_id: int, account: Account = ADMIN, session: Session = DB) -> Response:
    session.delete(_source(session, source_id))
    return RedirectResponse("/admin/sources", status_code=303)


def _users_page(request: Request, session: Session, error: str = "", status: int = 200) -> Response:
    users = session.scalars(select(Account).order_by(Account.role, Account.email)).all()
    return get_ctx(request).templates.TemplateResponse(
        request,
        "admin_users.html",
        {"users": users, "roles": [r.value for r in Role], "error": error},
        status_code=status,
    )


@router.get("/users", response_class=HTMLResponse)
def users(request: Request, account: Account = ADMIN, session: Session = DB) -> Response:
    return _users_page(request, session)


@router.post("/users", response_class=HTMLResponse)
def add_user(
    request: Request,
    account: Account = ADMIN,
    session: Session = DB,
    email: str = Form(""),
    role: str = Form("owner"),
    password: str = Form(""),
    display_name: str = Form(""),
) -> Response:
    from registry.service import PipelineError, normalise_email

    try:
        try:
            email = normalise_email(email)
        except PipelineError as exc:
            raise InvalidInput(f"enter one valid email address: {exc}") from None
        if role not in {r.value for r in Role}:
            raise InvalidInput(f"unknown role {role!r}")
        if len(password) < 10:
            raise InvalidInput("the password must be at least 10 characters")
        if session.scalar(select(Account).where(func.lower(Account.email) == email)) is not None:
            raise InvalidInput(f"an account for {email} already exists")
    except WebError as exc:
        return _users_page(request, session, exc.detail, exc.status)
    session.add(
        Account(
            email=email,
            role=Role(role),
            password_hash=hash_password(password),
            display_name=display_name.strip()[:200] or email,
            alert_mode=get_ctx(request).settings.alerts.default_mode,
        )
    )
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{user_id}/role", response_class=HTMLResponse)
def set_role(
    request: Request,
    user_id: int,
    role: str = Form(""),
    account: Account = ADMIN,
    session: Session = DB,
) -> Response:
    user = session.get(Account, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    if role not in {r.value for r in Role}:
        return _users_page(request, session, f"unknown role {role!r}", 422)
    if user.id == account.id and role != Role.ADMIN.value:
        return _users_page(request, session, "you cannot remove your own admin role", 422)
    user.role = Role(role)
    return RedirectResponse("/admin/users", status_code=303)


def _hosts_page(
    request: Request,
    override_text: str | None = None,
    error: str = "",
    saved: bool = False,
    status: int = 200,
) -> Response:
    from notices.errors import HostDirectoryError
    from notices.hosts import load_host_directory, parse_host_directory

    settings = get_ctx(request).settings
    documents = _documents(request)
    bundled = bundled_hosts_file(settings)
    stored = documents.get(HOSTS_OVERRIDE_NAME)
    if override_text is None:
        override_text = stored.data.decode("utf-8") if stored is not None else ""
    try:
        bundled_keys = set(load_host_directory(path=bundled).entries)
        entries = sorted(effective_host_directory(settings, documents).entries.values(), key=lambda e: e.key)
    except HostDirectoryError as exc:
        bundled_keys, entries = set(), []
        error = error or str(exc)
    overridden = set()
    if stored is not None:
        with contextlib.suppress(HostDirectoryError):
            overridden = set(parse_host_directory(stored.data.decode("utf-8"), HOSTS_OVERRIDE_NAME).entries)
    return get_ctx(request).templates.TemplateResponse(
        request,
        "admin_hosts.html",
        {
            "bundled": str(bundled),
            "override_path": documents.location(HOSTS_OVERRIDE_NAME),
            "entries": entries,
            "bundled_keys": bundled_keys,
            "overridden": overridden,
            "override_text": override_text,
            "error": error,
            "saved": saved,
        },
        status_code=status,
    )


@router.get("/hosts", response_class=HTMLResponse)
def hosts(request: Request, account: Account = ADMIN) -> Response:
    return _hosts_page(request)


@router.post("/hosts", response_class=HTMLResponse)
def save_hosts(request: Request, account: Account = ADMIN, override: str = Form("")) -> Response:
    """Validate the override with the notices package's loader, then replace the shared document at once."""
    from notices.errors import HostDirectoryError
    from notices.hosts import HostDirectory, load_host_directory, parse_host_directory

    text = override.replace("\r\n", "\n")
    bundled = bundled_hosts_file(get_ctx(request).settings)
    try:
        entries = dict(load_host_directory(path=bundled).entries)
        entries.update(parse_host_directory(text, HOSTS_OVERRIDE_NAME).entries)
        HostDirectory(list(entries.values()))
    except HostDirectoryError as exc:
        return _hosts_page(request, text, str(exc), status=422)
    _documents(request).put(HOSTS_OVERRIDE_NAME, text.encode("utf-8"))
    return _hosts_page(request, saved=True)
