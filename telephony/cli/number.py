"""`flask number`: the agency's phone numbers, set up and checked through their carrier."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..carriers.registry import CARRIERS
from ..db import get_db
from ..errors import DomainError
from .common import agency_option, emit, emit_each, parse_uuid, remove_row

number_cli = AppGroup("number", help="Phone numbers.")


@number_cli.command("add")
@click.argument("e164")
@agency_option
@click.option("--carrier", type=click.Choice([carrier.name for carrier in CARRIERS]), required=True)
@click.option("--agent", "agent_id", help="Agent mapping id (ours) answering this number.")
@click.option("--fallback", "fallback_number", help="E.164 number to dial when the agent cannot be reached.")
@click.option("--carrier-setup/--no-carrier-setup", "configure_carrier", default=True, show_default=True,
              help="Check with the carrier (the agency's stored credentials) that its account holds the number, "
                   "and point the number's voice and status webhooks here. --no-carrier-setup only stores it, for "
                   "a number set up by hand: nothing then proves the agency owns it.")
def number_add(e164: str, agency_id: str, carrier: str, agent_id: str | None, fallback_number: str | None,
               configure_carrier: bool) -> None:
    from ..services.number_setup import describe_setup, register_number
    with get_db().session() as session:
        number, setup = register_number(session, parse_uuid(agency_id, "--agency"), e164=e164, carrier=carrier,
                                        agent_id=parse_uuid(agent_id, "--agent") if agent_id else None,
                                        fallback_number=fallback_number, configure_carrier=configure_carrier)
        emit({"id": number.id, "e164": number.e164, "carrier": number.carrier.value, "agent_id": number.agent_id,
              "carrier_setup": describe_setup(setup)})


@number_cli.command("list")
@agency_option
def number_list(agency_id: str) -> None:
    from ..services.phone_numbers import list_numbers
    emit_each(list_numbers, agency_id, lambda number: {
        "id": number.id, "e164": number.e164, "carrier": number.carrier.value, "agent_id": number.agent_id,
        "fallback_number": number.fallback_number, "recording_enabled": number.recording_enabled})


@number_cli.command("remove")
@click.argument("number_id")
@agency_option
def number_remove(number_id: str, agency_id: str) -> None:
    """Forget a number. Its carrier settings are left as they are."""
    from ..services.phone_numbers import delete_number
    remove_row(delete_number, agency_id, number_id, "NUMBER_ID")


@number_cli.command("check")
@click.argument("number_id", required=False)
@agency_option
def number_check(number_id: str | None, agency_id: str) -> None:
    """Ask the carrier whether the number (default: every number of the agency) is still in
    the agency's account with its webhooks pointing here; one JSON line each (a number the
    carrier could not be asked about gets its error). Exits 1 when one does not point here."""
    from ..services.number_setup import check_number, describe_check
    from ..services.phone_numbers import get_number, list_numbers
    agency = parse_uuid(agency_id, "--agency")
    all_ok = True
    with get_db().session() as session:
        numbers = [get_number(session, agency, parse_uuid(number_id, "NUMBER_ID"))] if number_id \
            else list_numbers(session, agency)
        for number in numbers:
            try:
                check = check_number(session, agency, number.id)
            except DomainError as exc:  # e.g. the carrier's credentials are not stored, or it did not answer
                all_ok = False
                emit({"id": number.id, "e164": number.e164, "carrier": number.carrier.value, "points_here": None,
                      "error": exc.message, "code": exc.code})
                continue
            all_ok = all_ok and check.points_here
            emit(describe_check(check))
    if not all_ok:
        raise SystemExit(1)
