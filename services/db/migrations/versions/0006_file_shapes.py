"""file shapes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Files uploaded before stay null until a job reads them (`FileService.shapes`).
    op.add_column('files', sa.Column('shapes', postgresql.JSONB(astext_type=sa.Text()),
                                     nullable=True))


def downgrade() -> None:
    op.drop_column('files', 'shapes')
