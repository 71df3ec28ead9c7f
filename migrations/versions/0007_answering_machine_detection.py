"""answering-machine detection: who answered an outbound call, the on-machine policy of
calls and campaigns, the voicemail retry rule

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answered_by', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('answered_by_detail', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('on_machine', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('machine_message', JSON, nullable=True))
        batch_op.add_column(sa.Column('machine_action', sa.String(length=16), nullable=True))

    # Existing campaigns get the campaign default (hang up on machines, retry twice after 4 h).
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('on_machine', sa.String(length=16), server_default='hangup', nullable=False))
        batch_op.add_column(sa.Column('machine_message', JSON, nullable=True))
        batch_op.add_column(sa.Column('voicemail_max_retries', sa.Integer(), server_default='2', nullable=False))
        batch_op.add_column(sa.Column('voicemail_retry_delay_seconds', sa.Integer(), server_default='14400',
                                      nullable=False))

    with op.batch_alter_table('dial_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answered_by', sa.String(length=16), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('dial_attempts', schema=None) as batch_op:
        batch_op.drop_column('answered_by')

    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_column('voicemail_retry_delay_seconds')
        batch_op.drop_column('voicemail_max_retries')
        batch_op.drop_column('machine_message')
        batch_op.drop_column('on_machine')

    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('machine_action')
        batch_op.drop_column('machine_message')
        batch_op.drop_column('on_machine')
        batch_op.drop_column('answered_by_detail')
        batch_op.drop_column('answered_by')
