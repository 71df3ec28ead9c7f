"""`flask agency`: agencies, their prepaid credits and their share of Ultravox concurrency."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..db import get_db
from ..models import Agency
from .common import emit, fail, parse_uuid

agency_cli = AppGroup("agency", help="Agencies.")


def describe_agency(agency: Agency) -> dict:
    return {"id": agency.id, "name": agency.name, "credit_balance": agency.credit_balance}


@agency_cli.command("create")
@click.argument("name")
@click.option("--credits", "credit_balance", type=int, default=0, show_default=True,
              help="Prepaid call time in seconds.")
def agency_create(name: str, credit_balance: int) -> None:
    from ..services.agencies import create_agency
    with get_db().session() as session:
        emit(describe_agency(create_agency(session, name, credit_balance=credit_balance)))


@agency_cli.command("list")
def agency_list() -> None:
    from ..services.agencies import list_agencies
    with get_db().session() as session:
        for agency in list_agencies(session):
            emit(describe_agency(agency))


@agency_cli.command("set-credits")
@click.argument("agency_id")
@click.argument("seconds", type=int)
def agency_set_credits(agency_id: str, seconds: int) -> None:
    from ..services.agencies import get_agency
    with get_db().session() as session:
        agency = get_agency(session, parse_uuid(agency_id, "AGENCY_ID"))
        agency.credit_balance = seconds
        emit({"id": agency.id, "credit_balance": seconds})


@agency_cli.command("set-capacity")
@click.argument("agency_id")
@click.option("--max-concurrent-calls", type=int, help="The concurrency limit of the agency's Ultravox plan.")
@click.option("--unlimited", is_flag=True, help="No concurrency limit (nothing is counted).")
@click.option("--reserved-inbound", type=int, help="Slots campaigns may never take (kept for inbound callers).")
@click.option("--inbound-wait", "inbound_wait_seconds", type=int,
              help="Seconds an inbound caller waits on hold for a free slot (default 30).")
def agency_set_capacity(agency_id: str, max_concurrent_calls: int | None, unlimited: bool,
                        reserved_inbound: int | None, inbound_wait_seconds: int | None) -> None:
    """Share the agency's Ultravox concurrency between inbound callers and campaigns."""
    from ..services.capacity import live_calls, set_capacity
    if unlimited and max_concurrent_calls is not None:
        fail("--unlimited and --max-concurrent-calls exclude each other")
    changes: dict[str, int | None] = {}
    if unlimited or max_concurrent_calls is not None:
        changes["max_concurrent_calls"] = None if unlimited else max_concurrent_calls
    if reserved_inbound is not None:
        changes["reserved_inbound"] = reserved_inbound
    if inbound_wait_seconds is not None:
        changes["inbound_wait_seconds"] = inbound_wait_seconds
    with get_db().session() as session:
        agency = parse_uuid(agency_id, "AGENCY_ID")
        settings = set_capacity(session, agency, **changes)
        emit({"id": agency, "max_concurrent_calls": settings.max_concurrent_calls,
              "reserved_inbound": settings.reserved_inbound, "inbound_wait_seconds": settings.inbound_wait_seconds,
              "live_calls": live_calls(session, agency)})
