"""call transfers: agents' transfer targets, one row per transfer attempt

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('call_transfers',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('agency_id', sa.Uuid(), nullable=False),
    sa.Column('call_id', sa.Uuid(), nullable=False),
    sa.Column('carrier', sa.String(length=16), nullable=False),
    sa.Column('target_name', sa.String(length=64), nullable=False),
    sa.Column('destination', sa.String(length=255), nullable=False),
    sa.Column('mode', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('ring_timeout_seconds', sa.Integer(), nullable=False),
    sa.Column('carrier_leg_id', sa.String(length=128), nullable=True),
    sa.Column('ultravox_call_id', sa.String(length=64), nullable=True),
    sa.Column('resumed_call_id', sa.Uuid(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('call_transfers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_call_transfers_agency_id'), ['agency_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_call_transfers_call_id'), ['call_id'], unique=False)

    # Existing agents have no targets: an empty list, so the column is never NULL.
    with op.batch_alter_table('agent_mappings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transfer_targets', JSON, nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('agent_mappings', schema=None) as batch_op:
        batch_op.drop_column('transfer_targets')

    with op.batch_alter_table('call_transfers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_call_transfers_call_id'))
        batch_op.drop_index(batch_op.f('ix_call_transfers_agency_id'))

    op.drop_table('call_transfers')
