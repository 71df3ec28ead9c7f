"""`flask credentials`: the encrypted credential store (the agencies' provider secrets) and
its keys."""
from __future__ import annotations

import os
import sys

import click
from cryptography.fernet import Fernet
from flask.cli import AppGroup

from ..credentials import PROVIDER_FIELDS, CredentialError, get_credentials
from ..db import get_db
from .common import agency_option, emit, fail, parse_uuid

credentials_cli = AppGroup("credentials", help="The encrypted credential store.")


@credentials_cli.command("set")
@click.argument("provider", type=click.Choice(sorted(PROVIDER_FIELDS)))
@agency_option
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
                fail(f"stdin line {line_number}: expected field=value")
            values[name.strip()] = value.strip()
    if not values:
        fail(f"no {provider} credentials given; fields are: {', '.join(fields)}")
    store = get_credentials()
    with get_db().session() as session:
        agency = parse_uuid(agency_id, "--agency")
        from ..services.agencies import get_agency
        get_agency(session, agency)
        try:
            store.set(session, agency, provider, values)
        except ValueError as exc:
            fail(str(exc))
        emit({"agency_id": agency, provider: store.describe(session, agency)[provider]})


@credentials_cli.command("show")
@agency_option
def credentials_show(agency_id: str) -> None:
    """Which secrets are set, with their last 4 characters only."""
    with get_db().session() as session:
        emit(get_credentials().describe(session, parse_uuid(agency_id, "--agency")))


@credentials_cli.command("rotate")
def credentials_rotate() -> None:
    """Re-encrypt every stored secret (credentials and event-endpoint signing
    secrets) under the first key of CREDENTIALS_KEYS."""
    from ..services.event_endpoints import reseal_secrets
    try:
        with get_db().session() as session:  # all or nothing: a secret no key opens rolls everything back
            count = get_credentials().rotate(session)
            endpoints = reseal_secrets(session)
    except CredentialError as exc:
        fail(f"{exc}; nothing was changed. CREDENTIALS_KEYS must list the new key first and then "
             "every key secrets are encrypted with now (in development, without CREDENTIALS_KEYS, "
             "that is the generated key in the instance folder's credentials.key)")
    emit({"re_encrypted": count, "event_endpoint_secrets": endpoints})


@credentials_cli.command("generate-key")
def credentials_generate_key() -> None:
    """Print a new Fernet key for CREDENTIALS_KEYS (prepend it, rotate, then drop the old one)."""
    click.echo(Fernet.generate_key().decode())
