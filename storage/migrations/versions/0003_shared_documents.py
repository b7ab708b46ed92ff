"""shared documents: calibration, host-directory override, embedded secret key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 05:55:00

With ``shared.kind = "services"`` the small documents that every process
reads (the score calibration, the admin's host-directory override and the
generated web secret key) live in this table instead of DATA_DIR files
(``storage.documents.SqlDocumentStore``). ``version`` changes on every write,
so readers re-parse a document only when it changed.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'shared_documents',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('shared_documents')
