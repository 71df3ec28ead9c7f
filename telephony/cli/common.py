"""What the command groups share: one JSON line per result, one-line errors, UUID arguments,
the --agency option, and the bodies of the commands that list, remove or revoke an agency's rows."""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.orm import Session

from ..db import get_db
from ..errors import DomainError

Row = TypeVar("Row")

# The agency whose rows a command reads or changes.
agency_option = click.option("--agency", "agency_id", required=True)


def emit(payload: dict) -> None:
    click.echo(json.dumps(payload, default=str))


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        fail(f"{what} must be a UUID, got {value!r}")


def emit_each(list_rows: Callable[[Session, uuid.UUID], Iterable[Row]], agency_id: str,
              describe: Callable[[Row], dict]) -> None:
    """A `list` command: one JSON line per row of the agency."""
    with get_db().session() as session:
        for row in list_rows(session, parse_uuid(agency_id, "--agency")):
            emit(describe(row))


def remove_row(delete: Callable[[Session, uuid.UUID, uuid.UUID], None], agency_id: str, row_id: str,
               what: str) -> None:
    """A `remove` command: delete the agency's row `row_id` (the argument named `what`)."""
    with get_db().session() as session:
        delete(session, parse_uuid(agency_id, "--agency"), parse_uuid(row_id, what))
        emit({"id": row_id, "removed": True})


def revoke_key(revoke: Callable[[Session, uuid.UUID, uuid.UUID], Any], agency_id: str, key_id: str) -> None:
    """A `revoke` command of a key (API or public): the key stays listed, revoked."""
    with get_db().session() as session:
        row = revoke(session, parse_uuid(agency_id, "--agency"), parse_uuid(key_id, "KEY_ID"))
        emit({"id": row.id, "revoked_at": row.revoked_at})


def domain_errors_as_click(callback):
    @wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except DomainError as exc:
            raise click.ClickException(exc.message) from None
    wrapper.domain_errors_as_click = True
    return wrapper
