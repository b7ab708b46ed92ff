"""``artwatch index rebuild``: make the matching index hold exactly the registered works.

Mounted into the main ``artwatch`` CLI by ``workers/cli.py`` (``_LAZY``); the
database, blob store and settings come from its context (``ctx.obj``, built on
:class:`registry.root.Services`).
"""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["index_group"]


@click.group("index")
def index_group() -> None:
    """Maintain the matching index."""


@index_group.command("rebuild")
@click.pass_context
def index_rebuild(ctx: click.Context) -> None:
    """Rebuild the index from the works in the database."""
    from matching import build_engine
    from registry.root import queue_embedding
    from registry.service import rebuild_index

    obj: Any = ctx.find_object(object)
    if not (hasattr(obj, "settings") and hasattr(obj, "sessions") and hasattr(obj, "blobs")):
        # Mounted outside `artwatch`: the settings from the environment, the rest from the root.
        from config.settings import load_settings
        from registry.root import Services

        obj = Services.build(load_settings())
    settings = obj.settings
    engine = build_engine(settings)
    with click.progressbar(length=0, label="rebuilding index", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(1)

        report = rebuild_index(obj.sessions, obj.blobs, engine, progress=progress)
    for wid, why in report.failed:
        click.echo(f"work {wid}: {why}", err=True)
    click.echo(f"index rebuilt: {report.registered} works indexed, {report.removed} stale removed, "
               f"{len(report.failed)} failed")
    if report.embed_later:
        # No model here (workers.embed_stage): the GPU workers write the CLIP points.
        for wid in report.embed_later:
            queue_embedding(settings, wid)
        click.echo(f"{len(report.embed_later)} works queued for CLIP embedding on the GPU workers")
    if report.failed:
        ctx.exit(1)
