"""`flask publickey`: the agency's public web-call keys (x-api-access-key) for widgets: the
agents they may start calls for, the browser origins allowed, a rate limit."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from ..db import get_db
from .common import agency_option, emit, emit_each, parse_uuid, revoke_key

publickey_cli = AppGroup("publickey", help="Public web-call keys (x-api-access-key) for widgets.")


@publickey_cli.command("create")
@agency_option
@click.option("--name", required=True)
@click.option("--agent", "agent_ids", multiple=True, required=True,
              help="Repeatable: an agent mapping id (ours) the key may start calls for.")
@click.option("--origin", "origins", multiple=True,
              help="Repeatable: a browser origin allowed to use the key, e.g. https://www.example.com. "
                   "None: any origin.")
@click.option("--rate-limit", "rate_limit_per_minute", type=int, default=30, show_default=True,
              help="Calls per minute.")
def publickey_create(agency_id: str, name: str, agent_ids: tuple[str, ...], origins: tuple[str, ...],
                     rate_limit_per_minute: int) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    from ..services.public_keys import create_public_key
    with get_db().session() as session:
        row, plaintext = create_public_key(session, parse_uuid(agency_id, "--agency"), name=name,
                                           agent_ids=[parse_uuid(agent, "--agent") for agent in agent_ids],
                                           allowed_origins=origins, rate_limit_per_minute=rate_limit_per_minute)
        emit({"id": row.id, "name": row.name, "agent_ids": row.agent_ids, "allowed_origins": row.allowed_origins,
              "rate_limit_per_minute": row.rate_limit_per_minute, "key": plaintext})


@publickey_cli.command("list")
@agency_option
def publickey_list(agency_id: str) -> None:
    from ..services.public_keys import list_public_keys
    emit_each(list_public_keys, agency_id, lambda row: {
        "id": row.id, "name": row.name, "prefix": row.prefix, "agent_ids": row.agent_ids,
        "allowed_origins": row.allowed_origins, "rate_limit_per_minute": row.rate_limit_per_minute,
        "revoked_at": row.revoked_at})


@publickey_cli.command("revoke")
@click.argument("key_id")
@agency_option
def publickey_revoke(key_id: str, agency_id: str) -> None:
    from ..services.public_keys import revoke_public_key
    revoke_key(revoke_public_key, agency_id, key_id)
