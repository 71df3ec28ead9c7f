"""Management commands: `flask --app wsgi <group> <command>`.

Secrets are read from standard input or the environment, never from argv
(argv is visible to every user on the machine and lands in shell history).

An app imports this module the first time its command group (app.cli) is listed or asked
for a command (telephony/__init__.py), so a web worker, which runs none, never does.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from functools import wraps
from typing import NoReturn

import click
from cryptography.fernet import Fernet
from flask.cli import AppGroup

from .carriers.registry import CARRIERS
from .config import get_config
from .credentials import PROVIDER_FIELDS, CredentialError, get_credentials
from .errors import DomainError
from .models import Role


def _db():
    from .db import get_db
    return get_db()


def _emit(payload: dict) -> None:
    click.echo(json.dumps(payload, default=str))


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        _fail(f"{what} must be a UUID, got {value!r}")
        raise  # unreachable


db_cli = AppGroup("db", help="Database migrations.")
agency_cli = AppGroup("agency", help="Agencies.")
user_cli = AppGroup("user", help="Dashboard users.")
agent_cli = AppGroup("agent", help="Agent mappings.")
number_cli = AppGroup("number", help="Phone numbers.")
credentials_cli = AppGroup("credentials", help="The encrypted credential store.")
apikey_cli = AppGroup("apikey", help="Agency server API keys.")
publickey_cli = AppGroup("publickey", help="Public web-call keys (x-api-access-key) for widgets.")
token_cli = AppGroup("token", help="Development JWTs.")
worker_cli = AppGroup("worker", help="The background worker.")
maintenance_cli = AppGroup("maintenance", help="Housekeeping the worker also does on its own.")


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations."""
    from .migrate import upgrade
    upgrade(get_config().database_url, revision)
    click.echo(f"database at {revision}", err=True)


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (e.g. base)."""
    from .migrate import downgrade
    downgrade(get_config().database_url, revision)


@agency_cli.command("create")
@click.argument("name")
@click.option("--credits", "credit_balance", type=int, default=0, show_default=True,
              help="Prepaid call time in seconds.")
def agency_create(name: str, credit_balance: int) -> None:
    from .services.agencies import create_agency
    with _db().session() as session:
        agency = create_agency(session, name, credit_balance=credit_balance)
        _emit({"id": agency.id, "name": agency.name, "credit_balance": agency.credit_balance})


@agency_cli.command("list")
def agency_list() -> None:
    from .services.agencies import list_agencies
    with _db().session() as session:
        for agency in list_agencies(session):
            _emit({"id": agency.id, "name": agency.name, "credit_balance": agency.credit_balance})


@agency_cli.command("set-credits")
@click.argument("agency_id")
@click.argument("seconds", type=int)
def agency_set_credits(agency_id: str, seconds: int) -> None:
    from .services.agencies import get_agency
    with _db().session() as session:
        agency = get_agency(session, _uuid(agency_id, "AGENCY_ID"))
        agency.credit_balance = seconds
        _emit({"id": agency.id, "credit_balance": seconds})


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
    from .services.capacity import live_calls, set_capacity
    if unlimited and max_concurrent_calls is not None:
        _fail("--unlimited and --max-concurrent-calls exclude each other")
    changes: dict[str, int | None] = {}
    if unlimited or max_concurrent_calls is not None:
        changes["max_concurrent_calls"] = None if unlimited else max_concurrent_calls
    if reserved_inbound is not None:
        changes["reserved_inbound"] = reserved_inbound
    if inbound_wait_seconds is not None:
        changes["inbound_wait_seconds"] = inbound_wait_seconds
    with _db().session() as session:
        agency = _uuid(agency_id, "AGENCY_ID")
        settings = set_capacity(session, agency, **changes)
        _emit({"id": agency, "max_concurrent_calls": settings.max_concurrent_calls,
               "reserved_inbound": settings.reserved_inbound, "inbound_wait_seconds": settings.inbound_wait_seconds,
               "live_calls": live_calls(session, agency)})


@user_cli.command("add")
@click.argument("auth_subject")
@click.option("--agency", "agency_id", help="Agency id; omit for a user not yet in an agency.")
@click.option("--role", type=click.Choice([r.value for r in Role]), default="member", show_default=True)
@click.option("--email")
def user_add(auth_subject: str, agency_id: str | None, role: str, email: str | None) -> None:
    """Add a user by their Supabase auth subject (the JWT `sub`)."""
    from .services.agencies import add_user
    with _db().session() as session:
        user = add_user(session, auth_subject=auth_subject, role=Role(role), email=email,
                        agency_id=_uuid(agency_id, "--agency") if agency_id else None)
        _emit({"id": user.id, "auth_subject": user.auth_subject, "agency_id": user.agency_id, "role": role})


@user_cli.command("list")
@click.option("--agency", "agency_id", required=True)
def user_list(agency_id: str) -> None:
    from .services.agencies import list_users
    with _db().session() as session:
        for user in list_users(session, _uuid(agency_id, "--agency")):
            _emit({"id": user.id, "auth_subject": user.auth_subject, "email": user.email, "role": user.role.value})


@user_cli.command("remove")
@click.argument("user_id")
@click.option("--agency", "agency_id", required=True)
def user_remove(user_id: str, agency_id: str) -> None:
    """Delete a dashboard user of the agency (their tokens stop working at once)."""
    from .services.agencies import remove_user
    with _db().session() as session:
        remove_user(session, _uuid(agency_id, "--agency"), _uuid(user_id, "USER_ID"))
        _emit({"id": user_id, "removed": True})


@agent_cli.command("add")
@click.option("--agency", "agency_id", required=True)
@click.option("--name", required=True)
@click.option("--ultravox-agent-id", required=True)
@click.option("--recording/--no-recording", default=False, show_default=True)
def agent_add(agency_id: str, name: str, ultravox_agent_id: str, recording: bool) -> None:
    from .services.agents import create_agent
    with _db().session() as session:
        agent = create_agent(session, _uuid(agency_id, "--agency"), name=name, ultravox_agent_id=ultravox_agent_id,
                             recording_enabled=recording)
        _emit({"id": agent.id, "name": agent.name, "ultravox_agent_id": agent.ultravox_agent_id})


@agent_cli.command("list")
@click.option("--agency", "agency_id", required=True)
def agent_list(agency_id: str) -> None:
    from .services.agents import list_agents
    with _db().session() as session:
        for agent in list_agents(session, _uuid(agency_id, "--agency")):
            _emit({"id": agent.id, "name": agent.name, "ultravox_agent_id": agent.ultravox_agent_id,
                   "recording_enabled": agent.recording_enabled})


@agent_cli.command("remove")
@click.argument("agent_id")
@click.option("--agency", "agency_id", required=True)
def agent_remove(agent_id: str, agency_id: str) -> None:
    from .services.agents import delete_agent
    with _db().session() as session:
        delete_agent(session, _uuid(agency_id, "--agency"), _uuid(agent_id, "AGENT_ID"))
        _emit({"id": agent_id, "removed": True})


@agent_cli.command("targets")
@click.option("--agency", "agency_id", required=True)
@click.option("--agent", "agent_id", required=True, help="Agent mapping id (ours).")
@click.option("--set", "replace", is_flag=True,
              help="Replace the targets with the JSON list read from standard input ([] removes them).")
def agent_targets(agency_id: str, agent_id: str, replace: bool) -> None:
    """Show (or with --set, replace) the agent's transfer targets (docs/call-control.md)."""
    from .services.agents import get_agent, update_agent
    with _db().session() as session:
        agency, agent_uuid = _uuid(agency_id, "--agency"), _uuid(agent_id, "--agent")
        if replace:
            try:
                targets = json.loads(sys.stdin.read())
            except ValueError:
                _fail("standard input must be a JSON list of targets")
            agent = update_agent(session, agency, agent_uuid, transfer_targets=targets)
        else:
            agent = get_agent(session, agency, agent_uuid)
        _emit({"id": agent.id, "transfer_targets": agent.transfer_targets})


@number_cli.command("add")
@click.argument("e164")
@click.option("--agency", "agency_id", required=True)
@click.option("--carrier", type=click.Choice([carrier.name for carrier in CARRIERS]), required=True)
@click.option("--agent", "agent_id", help="Agent mapping id (ours) answering this number.")
@click.option("--fallback", "fallback_number", help="E.164 number to dial when the agent cannot be reached.")
@click.option("--carrier-setup/--no-carrier-setup", "configure_carrier", default=True, show_default=True,
              help="Check with the carrier (the agency's stored credentials) that its account holds the number, "
                   "and point the number's voice and status webhooks here. --no-carrier-setup only stores it, for "
                   "a number set up by hand: nothing then proves the agency owns it.")
def number_add(e164: str, agency_id: str, carrier: str, agent_id: str | None, fallback_number: str | None,
               configure_carrier: bool) -> None:
    from .services.number_setup import describe_setup, register_number
    with _db().session() as session:
        number, setup = register_number(session, _uuid(agency_id, "--agency"), e164=e164, carrier=carrier,
                                        agent_id=_uuid(agent_id, "--agent") if agent_id else None,
                                        fallback_number=fallback_number, configure_carrier=configure_carrier)
        _emit({"id": number.id, "e164": number.e164, "carrier": number.carrier.value, "agent_id": number.agent_id,
               "carrier_setup": describe_setup(setup)})


@number_cli.command("list")
@click.option("--agency", "agency_id", required=True)
def number_list(agency_id: str) -> None:
    from .services.phone_numbers import list_numbers
    with _db().session() as session:
        for number in list_numbers(session, _uuid(agency_id, "--agency")):
            _emit({"id": number.id, "e164": number.e164, "carrier": number.carrier.value,
                   "agent_id": number.agent_id, "fallback_number": number.fallback_number,
                   "recording_enabled": number.recording_enabled})


@number_cli.command("remove")
@click.argument("number_id")
@click.option("--agency", "agency_id", required=True)
def number_remove(number_id: str, agency_id: str) -> None:
    """Forget a number. Its carrier settings are left as they are."""
    from .services.phone_numbers import delete_number
    with _db().session() as session:
        delete_number(session, _uuid(agency_id, "--agency"), _uuid(number_id, "NUMBER_ID"))
        _emit({"id": number_id, "removed": True})


@number_cli.command("check")
@click.argument("number_id", required=False)
@click.option("--agency", "agency_id", required=True)
def number_check(number_id: str | None, agency_id: str) -> None:
    """Ask the carrier whether the number (default: every number of the agency) is still in
    the agency's account with its webhooks pointing here; one JSON line each (a number the
    carrier could not be asked about gets its error). Exits 1 when one does not point here."""
    from .services.number_setup import check_number, describe_check
    from .services.phone_numbers import get_number, list_numbers
    agency = _uuid(agency_id, "--agency")
    all_ok = True
    with _db().session() as session:
        numbers = [get_number(session, agency, _uuid(number_id, "NUMBER_ID"))] if number_id \
            else list_numbers(session, agency)
        for number in numbers:
            try:
                check = check_number(session, agency, number.id)
            except DomainError as exc:  # e.g. the carrier's credentials are not stored, or it did not answer
                all_ok = False
                _emit({"id": number.id, "e164": number.e164, "carrier": number.carrier.value, "points_here": None,
                       "error": exc.message, "code": exc.code})
                continue
            all_ok = all_ok and check.points_here
            _emit(describe_check(check))
    if not all_ok:
        raise SystemExit(1)


@credentials_cli.command("set")
@click.argument("provider", type=click.Choice(sorted(PROVIDER_FIELDS)))
@click.option("--agency", "agency_id", required=True)
@click.option("--from-env", is_flag=True,
              help="Read PROVIDER_FIELD variables, e.g. TWILIO_AUTH_TOKEN, ULTRAVOX_API_KEY.")
def credentials_set(provider: str, agency_id: str, from_env: bool) -> None:
    """Store secrets for PROVIDER. Reads `field=value` lines from stdin, prompts
    when stdin is a terminal, or takes environment variables with --from-env."""
    fields = PROVIDER_FIELDS[provider]
    values: dict[str, str] = {}
    if from_env:
        for name in fields:
            value = os.environ.get(f"{provider}_{name}".upper())
            if value:
                values[name] = value
    elif sys.stdin.isatty():
        for name in fields:
            value = click.prompt(f"{provider} {name} (empty to keep)", default="", hide_input=True,
                                 show_default=False)
            if value:
                values[name] = value
    else:
        for line_number, line in enumerate(sys.stdin, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep:
                _fail(f"stdin line {line_number}: expected field=value")
            values[name.strip()] = value.strip()
    if not values:
        _fail(f"no {provider} credentials given; fields are: {', '.join(fields)}")
    store = get_credentials()
    with _db().session() as session:
        agency = _uuid(agency_id, "--agency")
        from .services.agencies import get_agency
        get_agency(session, agency)
        try:
            store.set(session, agency, provider, values)
        except ValueError as exc:
            _fail(str(exc))
        _emit({"agency_id": agency, provider: store.describe(session, agency)[provider]})


@credentials_cli.command("show")
@click.option("--agency", "agency_id", required=True)
def credentials_show(agency_id: str) -> None:
    """Which secrets are set, with their last 4 characters only."""
    with _db().session() as session:
        _emit(get_credentials().describe(session, _uuid(agency_id, "--agency")))


@credentials_cli.command("rotate")
def credentials_rotate() -> None:
    """Re-encrypt every stored secret (credentials and event-endpoint signing
    secrets) under the first key of CREDENTIALS_KEYS."""
    from .services.event_endpoints import reseal_secrets
    try:
        with _db().session() as session:  # all or nothing: a secret no key opens rolls everything back
            count = get_credentials().rotate(session)
            endpoints = reseal_secrets(session)
    except CredentialError as exc:
        _fail(f"{exc}; nothing was changed. CREDENTIALS_KEYS must list the new key first and then "
              "every key secrets are encrypted with now (in development, without CREDENTIALS_KEYS, "
              "that is the generated key in the instance folder's credentials.key)")
    _emit({"re_encrypted": count, "event_endpoint_secrets": endpoints})


@credentials_cli.command("generate-key")
def credentials_generate_key() -> None:
    """Print a new Fernet key for CREDENTIALS_KEYS (prepend it, rotate, then drop the old one)."""
    click.echo(Fernet.generate_key().decode())


@apikey_cli.command("create")
@click.option("--agency", "agency_id", required=True)
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True, required=True,
              help="Repeatable: calls:read, calls:write, campaigns:read, campaigns:write, admin.")
def apikey_create(agency_id: str, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    from .services.api_keys import create_api_key
    with _db().session() as session:
        row, plaintext = create_api_key(session, _uuid(agency_id, "--agency"), name=name, scopes=scopes)
        _emit({"id": row.id, "name": row.name, "scopes": row.scopes, "key": plaintext})


@apikey_cli.command("list")
@click.option("--agency", "agency_id", required=True)
def apikey_list(agency_id: str) -> None:
    from .services.api_keys import list_api_keys
    with _db().session() as session:
        for row in list_api_keys(session, _uuid(agency_id, "--agency")):
            _emit({"id": row.id, "name": row.name, "prefix": row.prefix, "scopes": row.scopes,
                   "revoked_at": row.revoked_at})


@apikey_cli.command("revoke")
@click.argument("key_id")
@click.option("--agency", "agency_id", required=True)
def apikey_revoke(key_id: str, agency_id: str) -> None:
    from .services.api_keys import revoke_api_key
    with _db().session() as session:
        row = revoke_api_key(session, _uuid(agency_id, "--agency"), _uuid(key_id, "KEY_ID"))
        _emit({"id": row.id, "revoked_at": row.revoked_at})


@publickey_cli.command("create")
@click.option("--agency", "agency_id", required=True)
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
    from .services.public_keys import create_public_key
    with _db().session() as session:
        row, plaintext = create_public_key(session, _uuid(agency_id, "--agency"), name=name,
                                           agent_ids=[_uuid(agent, "--agent") for agent in agent_ids],
                                           allowed_origins=origins, rate_limit_per_minute=rate_limit_per_minute)
        _emit({"id": row.id, "name": row.name, "agent_ids": row.agent_ids, "allowed_origins": row.allowed_origins,
               "rate_limit_per_minute": row.rate_limit_per_minute, "key": plaintext})


@publickey_cli.command("list")
@click.option("--agency", "agency_id", required=True)
def publickey_list(agency_id: str) -> None:
    from .services.public_keys import list_public_keys
    with _db().session() as session:
        for row in list_public_keys(session, _uuid(agency_id, "--agency")):
            _emit({"id": row.id, "name": row.name, "prefix": row.prefix, "agent_ids": row.agent_ids,
                   "allowed_origins": row.allowed_origins, "rate_limit_per_minute": row.rate_limit_per_minute,
                   "revoked_at": row.revoked_at})


@publickey_cli.command("revoke")
@click.argument("key_id")
@click.option("--agency", "agency_id", required=True)
def publickey_revoke(key_id: str, agency_id: str) -> None:
    from .services.public_keys import revoke_public_key
    with _db().session() as session:
        row = revoke_public_key(session, _uuid(agency_id, "--agency"), _uuid(key_id, "KEY_ID"))
        _emit({"id": row.id, "revoked_at": row.revoked_at})


@token_cli.command("mint")
@click.argument("auth_subject")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds.")
def token_mint(auth_subject: str, ttl: int) -> None:
    """Print {"token": ...}: an HS256 access token for a user (needs SUPABASE_JWT_SECRET)."""
    from .auth import mint_token
    config = get_config()
    if not config.jwt_secret:
        _fail("SUPABASE_JWT_SECRET is not set; dev tokens are signed with it")
    _emit({"token": mint_token(config.jwt_secret, auth_subject, audience=config.jwt_audience, ttl_seconds=ttl),
           "sub": auth_subject, "expires_in": ttl})


@worker_cli.command("run")
@click.option("--poll-interval", type=float, default=1.0, show_default=True)
def worker_run(poll_interval: float) -> None:
    """Claim and run background jobs until SIGTERM."""
    from flask import current_app

    from .worker import main_loop
    # Flask types current_app as the Flask app itself, not as the proxy it is.
    main_loop(current_app._get_current_object(), poll_interval=poll_interval)  # type: ignore[attr-defined]


@worker_cli.command("check")
@click.option("--this-host", is_flag=True, help="Only workers of this host (a container's own health check).")
def worker_check(this_host: bool) -> None:
    """Exit 0 if a worker beat within the last minute (1 otherwise); prints the count."""
    import socket

    from .services.worker_heartbeats import count_alive
    with _db().session() as session:
        alive = count_alive(session, hostname=socket.gethostname() if this_host else None)
    _emit({"workers_alive": alive})
    if not alive:
        raise SystemExit(1)


@maintenance_cli.command("purge")
def maintenance_purge() -> None:
    """Delete expired bookkeeping rows now (each worker does it hourly); prints the counts."""
    from .services.retention import purge_expired
    _emit(purge_expired(_db(), get_config().retention_days))


def _domain_errors_as_click(callback):
    @wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except DomainError as exc:
            raise click.ClickException(exc.message) from None
    wrapper.domain_errors_as_click = True
    return wrapper


# Domain errors from services become one-line CLI errors, not tracebacks: each command of
# these groups is wrapped once, here (the groups are module-level and shared by every app).
for _group in (agency_cli, user_cli, agent_cli, number_cli, credentials_cli, apikey_cli, publickey_cli):
    for _command in _group.commands.values():
        _command.callback = _domain_errors_as_click(_command.callback)

COMMAND_GROUPS = (db_cli, agency_cli, user_cli, agent_cli, number_cli, credentials_cli, apikey_cli, publickey_cli,
                  token_cli, worker_cli, maintenance_cli)


def register(commands: click.Group) -> None:
    """Adds every command group to `commands`, an app's `flask` command group (app.cli)."""
    for group in COMMAND_GROUPS:
        commands.add_command(group)
