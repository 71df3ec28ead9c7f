"""`flask maintenance`: housekeeping the worker also does on its own."""
from __future__ import annotations

from flask.cli import AppGroup

from ..config import get_config
from ..db import get_db
from .common import emit

maintenance_cli = AppGroup("maintenance", help="Housekeeping the worker also does on its own.")


@maintenance_cli.command("purge")
def maintenance_purge() -> None:
    """Delete expired bookkeeping rows now (each worker does it hourly); prints the counts."""
    from ..services.retention import purge_expired
    emit(purge_expired(get_db(), get_config().retention_days))
