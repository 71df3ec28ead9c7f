"""agency capacity: concurrency limit, slots reserved for inbound, inbound wait; live calls counted by status

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('agencies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_concurrent_calls', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reserved_inbound', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('inbound_wait_seconds', sa.Integer(), server_default='30', nullable=False))

    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index('ix_calls_agency_status', ['agency_id', 'status'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index('ix_calls_agency_status')

    with op.batch_alter_table('agencies', schema=None) as batch_op:
        batch_op.drop_column('inbound_wait_seconds')
        batch_op.drop_column('reserved_inbound')
        batch_op.drop_column('max_concurrent_calls')
