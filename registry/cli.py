"""``artwatch index rebuild`` and ``index status``: the matching index as the registry holds it.

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
    # Every work's points are rewritten with this configuration's models: record them.
    engine = build_engine(settings, claim_vectors=True)
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


@index_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def index_status(ctx: click.Context, as_json: bool) -> None:
    """Show the local-feature index as this node sees it: vocabulary version and works.

    The engine is built the way a worker builds its replica (from the stored
    registry), so two nodes that share their state print the same vocabulary.
    """
    import json

    from matching import build_engine

    obj: Any = ctx.find_object(object)
    if hasattr(obj, "settings"):
        settings = obj.settings
    else:
        from config.settings import load_settings

        settings = load_settings()
    matching = settings.matching.model_copy(update={"use_embedder": False})
    index = build_engine(settings.model_copy(update={"matching": matching})).index
    index.refresh()
    report = {"vocabulary": index.vocab.version if index.vocab is not None else None,
              "works": len(index.work_ids)}
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"vocabulary: {report['vocabulary'] or 'none yet'}; works: {report['works']}")
