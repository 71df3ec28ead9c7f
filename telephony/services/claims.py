"""The claim of an inbound call: one winner per carrier call, and claims made together.

The claim is the call's row, inserted before Ultravox is asked for the call, keyed by
(source, carrier_call_id): INSERT ... ON CONFLICT DO NOTHING in autocommit. A repeated
webhook for the same carrier call inserts nothing and so never creates a second
Ultravox call (services/calls.py, "claim first"). With a route the web process kept
(services/inbound_routes.py), the claim also checks that route is still current: the
row is inserted from a one-row SELECT of the agency that is empty unless its
route_version is still the kept one and it has credit and no concurrency limit.

That claim is the one statement an inbound webhook waits for before Ultravox (with the
route kept), and measured as such it was most of what the service cost above the bare
minimum (docs/benchmarks.md, session 9). So on PostgreSQL the claims of one process's
concurrent webhooks go together (`ClaimBatch`), as a database does with commits: a
claim that finds none in flight is written at once, alone; claims arriving while it is
in flight wait, and the first of them writes all of them in one statement when it
returns. Under load that is one round trip and one transaction for several webhooks;
alone, it is exactly the one statement it was (CLAIM_IF_ROUTE_UNCHANGED).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Mapping, cast

from flask import Flask, current_app
from sqlalchemy import Table, and_, bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .. import direct_sql
from ..db import insert_for
from ..direct_sql import DirectStatement
from ..models import Agency, Call

_calls, _agencies = cast(Table, Call.__table__), cast(Table, Agency.__table__)
# The values a claim binds; the other columns take their defaults.
CLAIMED_COLUMNS = ("id", "agency_id", "agent_id", "source", "direction", "from_number", "to_number",
                   "carrier_call_id", "status")
# Built once, and run on the driver's connection (inbound webhooks are a hot path:
# telephony/direct_sql.py). The caller waits for the claim, so its commit does not wait for
# the disk: only a crash of the database server within ~600 ms could lose it, and then the
# call is already connected and its row is rebuilt from the Ultravox call's metadata like
# any unrecorded call (a carrier retry in that moment would be the one case answered twice).
CLAIM = DirectStatement(lambda dialect: insert_for(dialect)(_calls).values(
    {name: bindparam(name) for name in CLAIMED_COLUMNS})
    .on_conflict_do_nothing(index_elements=["source", "carrier_call_id"]), wait_for_disk=False, prepared=True)
# The same row, inserted only while the kept route is current (route_version: bumped by
# triggers on any change to the agency's numbers, agents and credentials) and the agency
# has credit and no concurrency limit. One primary-key lookup more than the claim above,
# instead of the route's four-table read before it.


def _route_unchanged(agency_id: Any, route_version: Any) -> list[Any]:
    return [_agencies.c.id == agency_id, _agencies.c.route_version == route_version,
            _agencies.c.credit_balance > 0, _agencies.c.max_concurrent_calls.is_(None)]


# Many of them at once (ClaimBatch): the claims' values in arrays, each row joined to its
# agency's current route, one prepared statement for any number of claims, returning the
# ids it inserted.
_CLAIMED_ROWS = direct_sql.unnest_rows("claimed", [(name, _calls.c[name].type) for name in CLAIMED_COLUMNS]
                                       + [("route_version", _agencies.c.route_version.type)])
CLAIM_IF_ROUTE_UNCHANGED = DirectStatement(
    lambda dialect: insert_for(dialect)(_calls).from_select(
        list(CLAIMED_COLUMNS),
        select(*[bindparam(name, type_=_calls.c[name].type) for name in CLAIMED_COLUMNS])
        .where(*_route_unchanged(bindparam("agency_id"), bindparam("route_version"))))
    .on_conflict_do_nothing(index_elements=["source", "carrier_call_id"]), wait_for_disk=False, prepared=True,
    many=DirectStatement(lambda dialect: insert_for(dialect)(_calls).from_select(
        list(CLAIMED_COLUMNS),
        select(*[_CLAIMED_ROWS.c[name] for name in CLAIMED_COLUMNS])
        .join(_agencies, and_(*_route_unchanged(_CLAIMED_ROWS.c.agency_id, _CLAIMED_ROWS.c.route_version))))
        .on_conflict_do_nothing(index_elements=["source", "carrier_call_id"]).returning(_calls.c.id),
        wait_for_disk=False, prepared=True))

_EXTENSION = "telephony.claim_batch"


def insert_claim(session: Session, params: Mapping[str, Any], route_version: int | None) -> bool:
    """Insert the claim (CLAIMED_COLUMNS in `params`); True if this call inserted it.
    False: the carrier call was claimed already, or (with a route_version) the kept route
    is not current. Raises SQLAlchemyError for a database error."""
    if route_version is None:
        return direct_sql.run(session, CLAIM, params).rowcount == 1
    batch = claim_batch()
    if batch is not None:
        return batch.claim({**params, "route_version": route_version})
    return direct_sql.run(session, CLAIM_IF_ROUTE_UNCHANGED, {**params, "route_version": route_version}) \
        .rowcount == 1


def claim_batch() -> ClaimBatch | None:
    return claim_batch_of(current_app)


def claim_batch_of(app: Flask) -> ClaimBatch | None:
    """The app's (PostgreSQL only: SQLite, for development, has one writer at a time)."""
    try:
        return app.extensions[_EXTENSION]
    except KeyError:
        engine = app.extensions["telephony.db"].engine
        return app.extensions.setdefault(_EXTENSION,
                                         ClaimBatch(engine) if engine.dialect.name == "postgresql" else None)


class _Claim:
    __slots__ = ("params", "done", "lead", "inserted", "error")

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params
        self.done = threading.Event()
        self.lead = False  # woken to write the next batch, not with its result
        self.inserted = False
        self.error: BaseException | None = None


class ClaimBatch:
    """Claims with a route_version (CLAIM_IF_ROUTE_UNCHANGED's), written together when
    they arrive together; PostgreSQL. Thread-safe; a forked child starts empty."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._waiting: list[_Claim] = []
        self._writing = False  # a batch is in flight: new claims wait for the next one

    def claim(self, params: Mapping[str, Any]) -> bool:
        """As CLAIM_IF_ROUTE_UNCHANGED (params: CLAIMED_COLUMNS and route_version)."""
        if self._pid != os.getpid():
            self._forked()
        mine = _Claim(params)
        with self._lock:
            self._waiting.append(mine)
            lead, self._writing = not self._writing, True
        if not lead:
            mine.done.wait()
            lead = mine.lead
        if lead:
            self._write_waiting()
        if mine.error is not None:
            raise mine.error
        return mine.inserted

    def _write_waiting(self) -> None:
        """Write every waiting claim in one statement, give each its result, and wake the
        first claim that arrived meanwhile to write the next batch (or end the run)."""
        with self._lock:
            batch, self._waiting = self._waiting, []
        inserted: set[str] = set()
        error: Exception | None = None
        try:
            if len(batch) == 1:  # alone: the single-row statement, cheaper to run and to plan
                if direct_sql.run(self.engine, CLAIM_IF_ROUTE_UNCHANGED, batch[0].params).rowcount == 1:
                    inserted = {str(batch[0].params["id"])}
            else:
                written = direct_sql.run_rows(self.engine, CLAIM_IF_ROUTE_UNCHANGED, [c.params for c in batch])
                inserted = {str(row.id) for row in written.rows}
        except Exception as exc:  # every claim of the batch raises it (a database error: "unrecorded")
            error = exc
        finally:
            # Whatever happened, nobody is left waiting. (Interrupted by anything else, the
            # batch's claims count as not inserted: their webhooks start over without them.)
            with self._lock:
                successor = self._waiting[0] if self._waiting else None
                if successor is None:
                    self._writing = False
                else:
                    successor.lead = True
            for claim in batch:
                claim.inserted, claim.error = str(claim.params["id"]) in inserted, error
                claim.done.set()
            if successor is not None:
                successor.done.set()

    def _forked(self) -> None:
        # A forked child: any claim in the parent's lists belongs to the parent's threads.
        self._lock, self._waiting, self._writing, self._pid = threading.Lock(), [], False, os.getpid()
