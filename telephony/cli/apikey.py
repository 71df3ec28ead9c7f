"""`flask apikey`: the agency's server API keys (scoped; only their hash is stored)."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..db import get_db
from .common import agency_option, emit, emit_each, parse_uuid, revoke_key

apikey_cli = AppGroup("apikey", help="Agency server API keys.")


@apikey_cli.command("create")
@agency_option
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True, required=True,
              help="Repeatable: calls:read, calls:write, campaigns:read, campaigns:write, admin.")
def apikey_create(agency_id: str, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    from ..services.api_keys import create_api_key
    with get_db().session() as session:
        row, plaintext = create_api_key(session, parse_uuid(agency_id, "--agency"), name=name, scopes=scopes)
        emit({"id": row.id, "name": row.name, "scopes": row.scopes, "key": plaintext})


@apikey_cli.command("list")
@agency_option
def apikey_list(agency_id: str) -> None:
    from ..services.api_keys import list_api_keys
    emit_each(list_api_keys, agency_id, lambda row: {"id": row.id, "name": row.name, "prefix": row.prefix,
                                                     "scopes": row.scopes, "revoked_at": row.revoked_at})


@apikey_cli.command("revoke")
@click.argument("key_id")
@agency_option
def apikey_revoke(key_id: str, agency_id: str) -> None:
    from ..services.api_keys import revoke_api_key
    revoke_key(revoke_api_key, agency_id, key_id)
