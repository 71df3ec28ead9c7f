"""Where an inbound call to a number goes: its route, read from the database or kept by the process.

A route is what the inbound webhook needs to know about the dialled number before it
can answer: the owning agency, the number's agent and settings, the agency's credit and
capacity, and its credential rows (still encrypted), which the signature check and the
Ultravox call need next. `find_route` reads it in one query.

Each web process also keeps the routes it read (`RouteCache`, one per app), with the
agency's `route_version` at the time. Database triggers bump that version on any change
to the agency's numbers, agents or credentials (migration 0011), whoever makes it, and
the webhook's claim is an INSERT ... SELECT that inserts only while the version is
unchanged and the agency has credit and no concurrency limit (calls.NewCall.route_version).
So a kept route saves the read without ever being used after a change has committed:
when the claim finds it changed, or the signature does not check out with the kept
credentials (they may have been rotated), the webhook forgets it and starts over from
`find_route` (services/inbound.py). Only routes the claim can check are kept: a number
with an agent, of an agency without a concurrency limit (a limit needs its live calls
counted before the claim anyway).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from flask import current_app
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .. import direct_sql
from ..credentials import get_credentials
from ..direct_sql import DirectStatement
from ..models import Agency, AgencyCredential, AgentMapping, PhoneNumber
from . import capacity

# Numbers kept per process: an agency platform has thousands, each ~1 KB kept.
MAX_KEPT_ROUTES = 20_000
_EXTENSION = "telephony.inbound_routes"


@dataclass(frozen=True, slots=True)
class RouteAgent:
    """The number's agent as read with the route (calls.CallAgent): plain values, no ORM
    instance to build on every webhook."""

    id: uuid.UUID
    ultravox_agent_id: str
    recording_enabled: bool
    transfer_targets: list[dict[str, Any]]


@dataclass(frozen=True)
class Route:
    agency_id: uuid.UUID
    e164: str
    fallback_number: str | None
    recording_enabled: bool | None  # the number's own setting; None follows the agent
    credit_balance: int  # the agency's (no credit: no agent, see calls.start_call)
    agent: RouteAgent | None
    max_concurrent_calls: int | None = None  # the agency's capacity (services/capacity.py)
    inbound_wait_seconds: int = capacity.DEFAULT_INBOUND_WAIT_SECONDS
    route_version: int = 0  # the agency's when this was read (see the module docstring)
    # The agency's credential rows, name -> ciphertext (decrypted only by the credential store).
    credential_rows: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def checkable(self) -> bool:
        """Whether the claim can check this route is still current (RouteCache keeps no other)."""
        return self.agent is not None and self.max_concurrent_calls is None


def find_route(session: Session, carrier: str, e164: str) -> Route | None:
    """The number (registered with this carrier), its agent and, in the same query, the
    owning agency's credential rows, which the signature check and the Ultravox call need
    next (handed to the credential store still encrypted: one round trip, not two).

    Plain columns, not ORM objects: the route outlives this read transaction, so it holds
    no ORM state that ending the transaction would expire (and reading it again cost
    another query)."""
    rows = direct_sql.run(session, _ROUTE_QUERY, {"e164": e164, "carrier": carrier}).rows
    if not rows:
        return None
    row = rows[0]
    agent = None
    if row.agent_id is not None:
        agent = RouteAgent(id=row.agent_id, ultravox_agent_id=row.ultravox_agent_id,
                           recording_enabled=row.agent_recording, transfer_targets=row.transfer_targets or [])
    route = Route(agency_id=row.agency_id, e164=row.e164, fallback_number=row.fallback_number,
                  recording_enabled=row.recording_enabled, credit_balance=row.credit_balance, agent=agent,
                  max_concurrent_calls=row.max_concurrent_calls, inbound_wait_seconds=row.inbound_wait_seconds,
                  route_version=row.route_version,
                  credential_rows={r.credential_name: r.ciphertext for r in rows if r.credential_name is not None})
    remember_credentials(session, route)
    return route


def remember_credentials(session: Session, route: Route) -> None:
    """Hand the route's credential rows to the credential store for this session, so
    that reading the agency's credentials costs no query of its own."""
    get_credentials().remember_rows(session, route.agency_id, route.credential_rows)


class RouteCache:
    """The routes this process read, by (carrier, E.164 number); only checkable ones.
    Shared by the request threads (single dict operations, atomic under the GIL)."""

    def __init__(self, max_routes: int = MAX_KEPT_ROUTES) -> None:
        self._routes: dict[tuple[str, str], Route] = {}
        self._max_routes = max_routes

    def get(self, carrier: str, e164: str) -> Route | None:
        return self._routes.get((carrier, e164))

    def keep(self, carrier: str, route: Route) -> None:
        if not route.checkable:
            self.forget(carrier, route.e164)
            return
        if len(self._routes) >= self._max_routes:
            try:  # the oldest kept goes (insertion order); a lost race is harmless
                del self._routes[next(iter(self._routes))]
            except (KeyError, RuntimeError, StopIteration):
                pass
        self._routes[(carrier, route.e164)] = route

    def forget(self, carrier: str, e164: str) -> None:
        self._routes.pop((carrier, e164), None)

    def __len__(self) -> int:
        return len(self._routes)


def route_cache() -> RouteCache:
    """The current app's (one per app, created on first use)."""
    extensions = current_app.extensions
    try:
        return extensions[_EXTENSION]
    except KeyError:
        return extensions.setdefault(_EXTENSION, RouteCache())


# Built once, from Core tables, and run on the driver's connection (telephony/direct_sql.py):
# a webhook is a hot path, and SQLAlchemy's execution path cost more than the statement.
# One row per credential of the agency (an agency has a handful), or one row with NULL
# credential columns.
_numbers, _agents, _secrets = PhoneNumber.__table__, AgentMapping.__table__, AgencyCredential.__table__
_agencies = Agency.__table__
_ROUTE_QUERY = DirectStatement(
    select(_numbers.c.agency_id, _numbers.c.e164, _numbers.c.fallback_number, _numbers.c.recording_enabled,
           _agencies.c.credit_balance, _agencies.c.max_concurrent_calls, _agencies.c.inbound_wait_seconds,
           _agencies.c.route_version,
           _agents.c.id.label("agent_id"), _agents.c.ultravox_agent_id,
           _agents.c.recording_enabled.label("agent_recording"), _agents.c.transfer_targets,
           _secrets.c.name.label("credential_name"), _secrets.c.ciphertext)
    .select_from(_numbers)
    .join(_agencies, _agencies.c.id == _numbers.c.agency_id)
    .outerjoin(_agents, (_agents.c.id == _numbers.c.agent_id) & (_agents.c.agency_id == _numbers.c.agency_id))
    .outerjoin(_secrets, _secrets.c.agency_id == _numbers.c.agency_id)
    .where(_numbers.c.e164 == bindparam("e164"), _numbers.c.carrier == bindparam("carrier")),
    prepared=True,  # planning the four-table join cost more than running it
)
