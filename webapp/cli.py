"""``artwatch web`` (serve the web app) and ``artwatch users`` (accounts and API tokens).

Both read ``ctx.obj`` (workers.cli.CliContext): ``settings``, ``sessions``
and ``blobs``. The lead mounts them on the ``artwatch`` command.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy import func, select

from storage.db import session_scope
from storage.models import Account, Role
from webapp.security import hash_password, issue_api_token

__all__ = ["users_group", "web_command"]

MIN_PASSWORD = 10


class UserError(click.ClickException):
    """A known problem with the command's input: one line, exit status 2."""

    exit_code = 2


@click.command("web")
@click.option("--host", default=None, help="Address to bind (default: settings web.host).")
@click.option("--port", type=int, default=None, help="Port (default: settings web.port).")
@click.option("--quiet", is_flag=True, hidden=True,
              help="No banner, warnings only (`artwatch run --web` serves after its own summary).")
@click.pass_context
def web_command(ctx: click.Context, host: str | None, port: int | None, quiet: bool) -> None:
    """Serve the web app and the JSON API."""
    import uvicorn

    from webapp.app import create_app

    obj: Any = ctx.obj
    settings = obj.settings
    app = create_app(settings, sessions=obj.sessions, blobs=obj.blobs, services=getattr(obj, "services", None))
    host = host or settings.web.host
    port = port if port is not None else settings.web.port
    shown = f"[{host}]" if ":" in host else host
    if not quiet:
        click.echo(
            f"artwatch web: serving on http://{shown}:{port}/ (public URL {settings.web.base_url})"
        )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning" if quiet else settings.log_level.lower(),
        # The app reads X-Forwarded-For itself, and only from web.trusted_proxies
        # (webapp.deps.client_ip); uvicorn's own handling trusts any local client.
        proxy_headers=False,
        server_header=False,
    )


@click.group("users")
def users_group() -> None:
    """Manage accounts (owners, reviewers, admins) and API tokens."""


@users_group.command("add")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.OWNER.value,
    show_default=True,
)
@click.option("--name", "display_name", default="", help="Display name (default: the email).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def add_user(
    ctx: click.Context, email: str, role: str, display_name: str, password_stdin: bool
) -> None:
    """Create an account."""
    from registry.service import PipelineError, normalise_email

    try:
        email = normalise_email(email)
    except PipelineError as exc:
        raise UserError(str(exc)) from None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must be at least {MIN_PASSWORD} characters")
    obj: Any = ctx.obj
    with session_scope(obj.sessions) as session:
        if session.scalar(select(Account).where(func.lower(Account.email) == email)) is not None:
            raise UserError(f"an account for {email} already exists")
        session.add(
            Account(
                email=email,
                role=Role(role),
                password_hash=hash_password(password),
                display_name=display_name or email,
                alert_mode=obj.settings.alerts.default_mode,
            )
        )
    click.echo(f"added {role} {email}")


@users_group.command("list")
@click.pass_context
def list_users(ctx: click.Context) -> None:
    """List accounts."""
    obj: Any = ctx.obj
    with session_scope(obj.sessions) as session:
        rows = session.scalars(select(Account).order_by(Account.role, Account.email)).all()
        if not rows:
            click.echo("no accounts yet; add one with 'artwatch users add EMAIL --role admin'")
            return
        width = max(len(a.email) for a in rows)
        click.echo(f"{'EMAIL'.ljust(width)}  ROLE      ALERTS   TOKEN  LOGIN")
        for a in rows:
            click.echo(
                f"{a.email.ljust(width)}  {a.role.value.ljust(8)}  {a.alert_mode.ljust(7)}  "
                f"{'yes' if a.api_token_hash else 'no '}    {'yes' if a.password_hash else 'no'}"
            )


@users_group.command("token")
@click.argument("email")
@click.pass_context
def new_token(ctx: click.Context, email: str) -> None:
    """Print a new API token for EMAIL (it replaces the old one)."""
    obj: Any = ctx.obj
    with session_scope(obj.sessions) as session:
        account = session.scalar(
            select(Account).where(func.lower(Account.email) == email.strip().lower())
        )
        if account is None:
            raise UserError(f"no account for {email}")
        token = issue_api_token(account)
    click.echo(token)
