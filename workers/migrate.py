"""Schema creation and upgrades through Alembic.

``artwatch init`` creates the schema once. Running it again over existing data
changes nothing and says so; ``--upgrade`` applies new migrations.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url

from config.settings import Settings

__all__ = ["AlreadyInitialised", "NotInitialised", "alembic_config", "init_database", "redact", "require_initialised"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "storage" / "migrations"


class NotInitialised(Exception):
    """The database has no artwatch schema yet (or an older one)."""


class AlreadyInitialised(Exception):
    """``init`` found an existing artwatch database and left it untouched."""


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _head(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()


def init_database(engine: Engine, settings: Settings, *, upgrade: bool = False) -> str:
    current = _current(engine)
    head = _head(engine)
    if current is None and inspect(engine).get_table_names():
        raise AlreadyInitialised(
            f"{redact(str(engine.url))} already holds tables that artwatch did not create; nothing changed"
        )
    if current is not None and not upgrade:
        state = (
            "up to date" if current == head
            else f"at revision {current}, newest is {head}: run `artwatch init --upgrade`"
        )
        raise AlreadyInitialised(
            f"artwatch is already initialised at {redact(str(engine.url))} ({state}); nothing changed"
        )
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return "upgraded" if current is not None else "initialised"


def require_initialised(engine: Engine, settings: Settings) -> None:
    current = _current(engine)
    if current is None:
        raise NotInitialised(
            f"no artwatch database at {redact(str(engine.url))}: run `artwatch init` first"
        )
    head = _head(engine)
    if current != head:
        raise NotInitialised(
            f"the database is at revision {current} but this artwatch needs {head}: run `artwatch init --upgrade`"
        )
