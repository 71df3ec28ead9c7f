"""retention: indexes on the columns the purge of expired bookkeeping rows selects by

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

"""
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# (table, column): telephony/services/retention.py deletes rows of each table by this column's age.
INDEXED = (
    ('processed_webhook_events', 'received_at'),
    ('event_deliveries', 'created_at'),
    ('jobs', 'finished_at'),
    ('idempotency_keys', 'created_at'),
)


def upgrade() -> None:
    """Upgrade schema."""
    for table, column in INDEXED:
        op.create_index(f'ix_{table}_{column}', table, [column], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    for table, column in reversed(INDEXED):
        op.drop_index(f'ix_{table}_{column}', table_name=table)
