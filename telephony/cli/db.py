"""`flask db`: the database's migrations (Alembic, loaded only when a command runs)."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..config import get_config

db_cli = AppGroup("db", help="Database migrations.")


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations."""
    from ..migrate import upgrade
    upgrade(get_config().database_url, revision)
    click.echo(f"database at {revision}", err=True)


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (e.g. base)."""
    from ..migrate import downgrade
    downgrade(get_config().database_url, revision)
