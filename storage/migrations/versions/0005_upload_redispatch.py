"""uploads: when the stalled-upload sweep last queued one again, and how often

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 19:20:00

Redis can lose a message outright: kombu pops it (BRPOP) before it records it
as unacked, so a worker killed in between leaves no copy to redeliver. The
database is the record of what is still to do; ``workers.stalled`` queues a
pending upload's fetch again once it has waited ``workers.stall_after_s``, and
these columns keep it from doing so on every sweep.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('uploads', sa.Column('redispatched_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('uploads', sa.Column('redispatches', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('uploads') as batch:
        batch.drop_column('redispatches')
        batch.drop_column('redispatched_at')
