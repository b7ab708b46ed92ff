"""work external ids are unique per owner, not across owners

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:50:00

Before this revision ``works.external_id`` was unique across the whole
registry, so ``works add --id logo`` by a second owner found the first
owner's work and re-registered it as their own (issue 16, item 8). The
global unique constraint becomes one on ``(owner_id, external_id)``.

The global constraint was created without a name. PostgreSQL named it
itself (``works_external_id_key``); SQLite keeps it as an unnamed table
constraint that only a table rebuild removes, so the SQLite path rebuilds
``works`` in batch mode. ``workers.migrate`` switches SQLite's foreign keys
off around migrations: a rebuild drops the old table, and with foreign keys
on that drop would cascade into ``matches`` and ``notice_items``.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_NEW = "uq_work_owner_external_id"
# What the unnamed constraint is called during a SQLite batch rebuild.
_SQLITE_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _global_constraint_name() -> str | None:
    """The name the database gave the old unique(external_id) constraint, if any."""
    for uc in sa.inspect(op.get_bind()).get_unique_constraints("works"):
        if list(uc["column_names"]) == ["external_id"]:
            return uc["name"]
    return None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("works", naming_convention=_SQLITE_CONVENTION, recreate="always") as batch_op:
            batch_op.drop_constraint("uq_works_external_id", type_="unique")
            batch_op.create_unique_constraint(_NEW, ["owner_id", "external_id"])
        return
    name = _global_constraint_name()
    if name is not None:
        op.drop_constraint(name, "works", type_="unique")
    op.create_unique_constraint(_NEW, "works", ["owner_id", "external_id"])


def downgrade() -> None:
    # Fails (and changes nothing) when two owners now share an external id:
    # the old schema cannot hold that registry.
    with op.batch_alter_table("works") as batch_op:
        batch_op.drop_constraint(_NEW, type_="unique")
        batch_op.create_unique_constraint("works_external_id_key", ["external_id"])
