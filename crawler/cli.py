"""``artwatch sources``: add, list and remove the sites to crawl.

Mounted by ``workers/cli.py``. Commands read ``ctx.obj.settings`` and
``ctx.obj.sessions`` (a sessionmaker) from the click context object.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select

from crawler.errors import CrawlError
from crawler.service import SOURCE_KINDS, validate_source
from storage.db import session_scope
from storage.models import Source, Upload, UploadStatus

__all__ = ["sources_group"]


def _parse_params(values: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        params[key.strip()] = value
    return params


@click.group("sources")
def sources_group() -> None:
    """Manage the sites artwatch crawls."""


@sources_group.command("add")
@click.argument("name")
@click.argument("kind")
@click.argument("url")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Source parameter, repeatable (e.g. -p tag=art for a Mastodon hashtag).",
)
@click.option(
    "--every",
    "every",
    type=click.IntRange(min=10),
    default=300,
    show_default=True,
    help="Seconds between polls (polling sources).",
)
@click.option("--disabled", is_flag=True, help="Add it switched off.")
@click.pass_context
def add_source(
    ctx: click.Context,
    name: str,
    kind: str,
    url: str,
    params: tuple[str, ...],
    every: int,
    disabled: bool,
) -> None:
    """Add a source NAME of KIND crawling URL.

    \b
    Kinds and their parameters:
      mastodon   instance URL; tag=NAME | account=ID | acct=USER, local=true
      rss        feed URL (RSS 2.0 or Atom)
      reddit     https://www.reddit.com/r/NAME (or .../new.json)
      wikimedia  EventStreams URL; wiki=commonswiki
      bluesky    Jetstream subscribe URL (wss://...)
      html       a page URL (<img>, srcset, og:image)
      sitemap    an image sitemap URL
    """
    parsed = _parse_params(params)
    if not name.strip() or len(name) > 100:
        raise click.BadParameter("must be 1-100 characters", param_hint="NAME")
    try:
        validate_source(kind, url, parsed)
    except CrawlError as exc:
        raise click.UsageError(str(exc)) from None
    with session_scope(ctx.obj.sessions) as s:
        if s.scalar(select(Source.id).where(Source.name == name)) is not None:
            raise click.UsageError(f"a source named {name!r} already exists (remove it first)")
        s.add(
            Source(
                name=name,
                kind=kind,
                url=url,
                params=parsed,
                poll_seconds=every,
                enabled=not disabled,
            )
        )
    click.echo(f"added {kind} source {name!r}: {url}")


@sources_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_sources(ctx: click.Context, as_json: bool) -> None:
    """List sources with their last success, last error and backlog."""
    with session_scope(ctx.obj.sessions) as s:
        backlog = dict(
            s.execute(
                select(Upload.source_id, func.count())
                .where(Upload.status == UploadStatus.PENDING, Upload.deleted_at.is_(None))
                .group_by(Upload.source_id)
            ).all()
        )
        rows: list[dict[str, Any]] = [
            {
                "name": src.name,
                "kind": src.kind,
                "url": src.url,
                "params": src.params or {},
                "enabled": src.enabled,
                "every": src.poll_seconds,
                "streaming": bool(getattr(SOURCE_KINDS.get(src.kind), "streaming", False)),
                "last_success_at": src.last_success_at.isoformat() if src.last_success_at else None,
                "last_error": src.last_error,
                "uploads_seen": src.uploads_seen,
                "backlog": int(backlog.get(src.id, 0)),
            }
            for src in s.scalars(select(Source).order_by(Source.name))
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no sources: add one with `artwatch sources add NAME KIND URL`")
        return
    for r in rows:
        state = "on" if r["enabled"] else "off"
        mode = "stream" if r["streaming"] else f"every {r['every']}s"
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        click.echo(f"{r['name']}\t{r['kind']}\t{state}\t{mode}\t{r['url']} {params}".rstrip())
        click.echo(
            f"\tlast success: {r['last_success_at'] or 'never'}; seen {r['uploads_seen']}; "
            f"backlog {r['backlog']}"
        )
        if r["last_error"]:
            click.echo(f"\tlast error: {r['last_error']}")


@sources_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prune", is_flag=True, help="Also remove sources the file does not list.")
@click.pass_context
def import_sources(ctx: click.Context, path: Path, prune: bool) -> None:
    """Add or update sources from a TOML file (by name), e.g.

    \b
    [[source]]
    name = "pixelfed-art"
    kind = "mastodon"
    url = "https://pixelfed.social"
    params = { tag = "art" }
    every = 600
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.UsageError(f"{path}: {exc}") from None
    entries = data.get("source", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise click.UsageError(f"{path}: expected [[source]] tables")
    problems: list[str] = []
    for i, e in enumerate(entries):
        unknown = set(e) - {"name", "kind", "url", "params", "every", "enabled"}
        where = f"source #{i + 1} ({e.get('name', '?')})"
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
            continue
        if not all(isinstance(e.get(k), str) and e.get(k) for k in ("name", "kind", "url")):
            problems.append(f"{where}: name, kind and url are required strings")
            continue
        try:
            validate_source(e["kind"], e["url"], dict(e.get("params", {})))
        except CrawlError as exc:
            problems.append(f"{where}: {exc}")
    names = [e.get("name") for e in entries]
    if len(set(names)) != len(names):
        problems.append("duplicate names in the file")
    if problems:
        raise click.UsageError(f"{path}:\n  " + "\n  ".join(problems))
    added = updated = removed = 0
    with session_scope(ctx.obj.sessions) as s:
        for e in entries:
            row = s.scalar(select(Source).where(Source.name == e["name"]))
            if row is None:
                row = Source(name=e["name"])
                s.add(row)
                added += 1
            else:
                updated += 1
                if (row.kind, row.url) != (e["kind"], e["url"]):
                    row.cursor = None  # another site: start afresh
            row.kind, row.url = e["kind"], e["url"]
            row.params = {k: str(v) for k, v in dict(e.get("params", {})).items()}
            row.poll_seconds = int(e.get("every", 300))
            row.enabled = bool(e.get("enabled", True))
        if prune:
            for row in s.scalars(select(Source).where(Source.name.not_in(names))):
                s.delete(row)
                removed += 1
    click.echo(f"{path}: {added} added, {updated} updated, {removed} removed")


@sources_group.command("remove")
@click.argument("name")
@click.pass_context
def remove_source(ctx: click.Context, name: str) -> None:
    """Remove source NAME. Its uploads and matches stay (their source is cleared)."""
    with session_scope(ctx.obj.sessions) as s:
        src = s.scalar(select(Source).where(Source.name == name))
        if src is None:
            raise click.UsageError(f"no source named {name!r}")
        s.delete(src)
    click.echo(f"removed source {name!r}")
