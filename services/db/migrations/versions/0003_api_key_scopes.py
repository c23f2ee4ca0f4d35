"""api key scopes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:50:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keys made before scopes keep every right they had.
    op.add_column('api_keys', sa.Column(
        'scopes', postgresql.JSONB(astext_type=sa.Text()), nullable=False,
        server_default='["read", "train", "generate", "score"]'))


def downgrade() -> None:
    op.drop_column('api_keys', 'scopes')
