"""the local-feature registry's tables, for [shared] kind = "services"

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 06:00:00

``matching.store.sql.SqlFeatureStore`` keeps the change feed (``feature_changes``,
whose id is the readers' cursor), one row per work's feature blob, the
published vocabularies and the postings snapshots' pointers here; the arrays
themselves are blob-store objects. The folder store uses none of them.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('feature_changes',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('op', sa.String(length=8), nullable=False),
        sa.Column('work_id', sa.BigInteger(), nullable=True),
        sa.Column('vocab', sa.String(length=64), nullable=True),
        sa.Column('works', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table('feature_works',
        sa.Column('work_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('blob_key', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('work_id'),
    )
    op.create_table('feature_vocabs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('blob_key', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('works', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('version'),
    )
    op.create_table('feature_snapshots',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('vocab', sa.String(length=64), nullable=False),
        sa.Column('cursor', sa.BigInteger(), nullable=False),
        sa.Column('meta', sa.JSON(), nullable=False),
        sa.Column('arrays', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_index(op.f('ix_feature_snapshots_vocab'), 'feature_snapshots', ['vocab'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_feature_snapshots_vocab'), table_name='feature_snapshots')
    op.drop_table('feature_snapshots')
    op.drop_table('feature_vocabs')
    op.drop_table('feature_works')
    op.drop_table('feature_changes')
