"""route version: agencies.route_version, bumped by the database whenever what an inbound webhook reads of a number changes

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

A web process keeps each dialled number's route (number, agent, the agency's credential
rows) and the agency's route_version it read them at (services/inbound_routes.py); the
webhook's claim inserts the call only if that version is still the agency's. Triggers,
not the service layer, bump it: every writer (the API, the CLI, an operator's SQL) is
covered, so a cached route can never be used after a change has committed.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The tables an inbound route is read from, besides agencies itself (whose columns the
# claim checks directly: credit, concurrency limit).
ROUTE_TABLES = ("phone_numbers", "agent_mappings", "agency_credentials")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('agencies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('route_version', sa.BigInteger(), server_default='0', nullable=False))
    if op.get_bind().dialect.name == "postgresql":
        # OLD is NULL in an INSERT trigger, NEW in a DELETE one: the IN list covers all three,
        # and an UPDATE that moves a row to another agency bumps both.
        op.execute("""
            CREATE FUNCTION bump_route_version() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE agencies SET route_version = route_version + 1 WHERE id IN (OLD.agency_id, NEW.agency_id);
                RETURN NULL;
            END $$""")
        for table in ROUTE_TABLES:
            op.execute(f"CREATE TRIGGER {table}_route_version AFTER INSERT OR UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION bump_route_version()")
        return
    for table in ROUTE_TABLES:
        for event, agencies in (("INSERT", "NEW.agency_id"), ("UPDATE", "OLD.agency_id, NEW.agency_id"),
                                ("DELETE", "OLD.agency_id")):
            op.execute(f"CREATE TRIGGER {table}_route_version_{event.lower()} AFTER {event} ON {table} "
                       f"BEGIN UPDATE agencies SET route_version = route_version + 1 WHERE id IN ({agencies}); END")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        for table in ROUTE_TABLES:
            op.execute(f"DROP TRIGGER {table}_route_version ON {table}")
        op.execute("DROP FUNCTION bump_route_version()")
    else:
        for table in ROUTE_TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {table}_route_version_{event}")
    with op.batch_alter_table('agencies', schema=None) as batch_op:
        batch_op.drop_column('route_version')
