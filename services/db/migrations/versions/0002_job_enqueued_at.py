"""job enqueued_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 02:59:30.201156
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))
    # Jobs already waiting count as published when they were created.
    op.execute("UPDATE jobs SET enqueued_at = created_at WHERE status = 'queued'")


def downgrade() -> None:
    op.drop_column('jobs', 'enqueued_at')
