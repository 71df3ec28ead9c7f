"""`flask worker`: run the background worker, or check that one is alive."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..db import get_db
from .common import emit

worker_cli = AppGroup("worker", help="The background worker.")


@worker_cli.command("run")
@click.option("--poll-interval", type=float, default=1.0, show_default=True)
def worker_run(poll_interval: float) -> None:
    """Claim and run background jobs until SIGTERM."""
    from flask import current_app

    from ..worker import main_loop
    # Flask types current_app as the Flask app itself, not as the proxy it is.
    main_loop(current_app._get_current_object(), poll_interval=poll_interval)  # type: ignore[attr-defined]


@worker_cli.command("check")
@click.option("--this-host", is_flag=True, help="Only workers of this host (a container's own health check).")
def worker_check(this_host: bool) -> None:
    """Exit 0 if a worker beat within the last minute (1 otherwise); prints the count."""
    import socket

    from ..services.worker_heartbeats import count_alive
    with get_db().session() as session:
        alive = count_alive(session, hostname=socket.gethostname() if this_host else None)
    emit({"workers_alive": alive})
    if not alive:
        raise SystemExit(1)
