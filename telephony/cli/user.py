"""`flask user`: dashboard users, known by their Supabase auth subject."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..db import get_db
from ..models import Role
from .common import agency_option, emit, emit_each, parse_uuid, remove_row

user_cli = AppGroup("user", help="Dashboard users.")


@user_cli.command("add")
@click.argument("auth_subject")
@click.option("--agency", "agency_id", help="Agency id; omit for a user not yet in an agency.")
@click.option("--role", type=click.Choice([r.value for r in Role]), default="member", show_default=True)
@click.option("--email")
def user_add(auth_subject: str, agency_id: str | None, role: str, email: str | None) -> None:
    """Add a user by their Supabase auth subject (the JWT `sub`)."""
    from ..services.agencies import add_user
    with get_db().session() as session:
        user = add_user(session, auth_subject=auth_subject, role=Role(role), email=email,
                        agency_id=parse_uuid(agency_id, "--agency") if agency_id else None)
        emit({"id": user.id, "auth_subject": user.auth_subject, "agency_id": user.agency_id, "role": role})


@user_cli.command("list")
@agency_option
def user_list(agency_id: str) -> None:
    from ..services.agencies import list_users
    emit_each(list_users, agency_id, lambda user: {"id": user.id, "auth_subject": user.auth_subject,
                                                   "email": user.email, "role": user.role.value})


@user_cli.command("remove")
@click.argument("user_id")
@agency_option
def user_remove(user_id: str, agency_id: str) -> None:
    """Delete a dashboard user of the agency (their tokens stop working at once)."""
    from ..services.agencies import remove_user
    remove_row(remove_user, agency_id, user_id, "USER_ID")
