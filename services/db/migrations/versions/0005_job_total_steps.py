"""job total_steps

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:05:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('total_steps', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'total_steps')
