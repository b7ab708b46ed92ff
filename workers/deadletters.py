"""``artwatch deadletters``: list and replay tasks that failed for good."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import select

from storage.db import session_scope
from storage.models import DeadLetter

__all__ = ["deadletters_group", "replay"]


def replay(sessions: Any, app: Any, ids: list[int] | None = None) -> int:
    """Send dead letters back to their queues; each is replayed at most once."""
    sent = 0
    with session_scope(sessions) as s:
        q = select(DeadLetter).where(DeadLetter.replayed_at.is_(None))
        if ids:
            q = q.where(DeadLetter.id.in_(ids))
        for dl in s.scalars(q):
            app.send_task(dl.task, args=dl.args, kwargs=dl.kwargs)
            dl.replayed_at = datetime.now(UTC)
            sent += 1
    return sent


@click.group("deadletters")
def deadletters_group() -> None:
    """Tasks that failed after all their retries."""


@deadletters_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include replayed ones.")
@click.pass_obj
def list_cmd(obj: Any, show_all: bool) -> None:
    """List dead letters, newest first."""
    with session_scope(obj.sessions) as s:
        q = select(DeadLetter).order_by(DeadLetter.id.desc())
        if not show_all:
            q = q.where(DeadLetter.replayed_at.is_(None))
        rows = list(s.scalars(q))
        if not rows:
            click.echo("no dead letters")
        for dl in rows:
            state = f"replayed {dl.replayed_at:%Y-%m-%d %H:%M}" if dl.replayed_at else "waiting"
            click.echo(f"{dl.id:>5}  {dl.created_at:%Y-%m-%d %H:%M}  {dl.task}{tuple(dl.args)}  "
                       f"tries {dl.tries}  {state}\n       {dl.error}")


@deadletters_group.command("replay")
@click.argument("ids", nargs=-1, type=int)
@click.pass_obj
def replay_cmd(obj: Any, ids: tuple[int, ...]) -> None:
    """Queue dead letters again (all waiting ones, or the given ids)."""
    from workers.tasks import configured_app

    n = replay(obj.sessions, configured_app(obj.settings), list(ids) or None)
    click.echo(f"replayed {n} dead letters")
