"""Schema creation and upgrades through Alembic.

``artwatch init`` creates the schema once. Running it again over existing data
changes nothing and says so; ``--upgrade`` applies new migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from config.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions that migrate: every CLI command checks
# the schema revision, and importing Alembic (and Mako) for that doubled the
# start-up of a plain `artwatch works list`.

__all__ = [
    "AlreadyInitialised",
    "NotInitialised",
    "alembic_config",
    "init_database",
    "redact",
    "require_initialised",
    "upgrade_to",
]

MIGRATIONS = Path(__file__).resolve().parent.parent / "storage" / "migrations"

# The newest migration's revision. Every command checks the database against it
# before it runs; reading it from Alembic's script directory costs 0.3 s of
# start-up, so it is written here, and a test holds it equal to Alembic's head
# (tests/foundation/test_storage.py). A new migration updates it.
HEAD_REVISION = "0005"


class NotInitialised(Exception):
    """The database has no artwatch schema yet (or an older one)."""


class AlreadyInitialised(Exception):
    """``init`` found an existing artwatch database and left it untouched."""


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _current(engine: Engine) -> str | None:
    """The revision Alembic recorded (its one-row ``alembic_version`` table), or None."""
    if not inspect(engine).has_table("alembic_version"):
        return None
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:
        return None
    if len(rows) > 1:
        raise NotInitialised(f"{redact(str(engine.url))} records several schema heads: {sorted(rows)}")
    return rows[0] if rows else None


def _head(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

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
    upgrade_to(engine, "head")
    return "upgraded" if current is not None else "initialised"


def upgrade_to(engine: Engine, revision: str) -> None:
    """Apply migrations up to ``revision`` in one transaction.

    On SQLite, foreign keys are off while the migrations run and checked
    afterwards: a revision that rebuilds a table (SQLite cannot drop a
    constraint in place) drops the old table, and with foreign keys on that
    drop would cascade into every table that references it. The pragma has
    no effect inside a transaction, so it is set before the transaction
    begins; ``foreign_key_check`` then refuses a migration that left a
    dangling reference.
    """
    from alembic import command

    cfg = alembic_config(str(engine.url))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration left dangling foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def require_initialised(engine: Engine, settings: Settings) -> None:
    current = _current(engine)
    if current is None:
        raise NotInitialised(
            f"no artwatch database at {redact(str(engine.url))}: run `artwatch init` first"
        )
    head = HEAD_REVISION
    if current != head:
        raise NotInitialised(
            f"the database is at revision {current} but this artwatch needs {head}: run `artwatch init --upgrade`"
        )
