"""One inbound webhook issues at most 5 SQL statements: counted, not guessed.

Every statement the engine sends is seen by a `before_cursor_execute` listener (the
hot path's statements run on the driver's connection, telephony/direct_sql.py, which
tells the engine's listeners too). Transaction control is reported separately: on
SQLite, db.py's pysqlite recipe emits BEGIN itself for a Session's transactions, while
psycopg2 begins PostgreSQL transactions implicitly. The inbound path runs each statement
as a transaction of its own (autocommit): no BEGIN and no COMMIT on either.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import pytest
import responses
from sqlalchemy import event

from telephony import direct_sql
from tests.inbound_helpers import PlivoCase, TelnyxTexmlCase, TwilioCase, UltravoxMock, parse_answer, seed

CASES = [TwilioCase(), TelnyxTexmlCase(), PlivoCase()]
TRANSACTION_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)
MAX_STATEMENTS = 5
# PostgreSQL: the claim's commit does not wait for the disk (services/claims.py CLAIM).
NO_WAIT_FOR_DISK = "SET LOCAL synchronous_commit TO OFF; "


@contextmanager
def counted(app) -> Iterator[list[str]]:
    engine = app.extensions["telephony.db"].engine
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        # A prepared statement (PREPARE ... / EXECUTE ...) counted as the statement it runs.
        seen.append(" ".join(direct_sql.as_planned(statement).split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _split(seen: list[str]) -> tuple[list[str], list[str]]:
    control = [s for s in seen if TRANSACTION_CONTROL.match(s)]
    return [s for s in seen if not TRANSACTION_CONTROL.match(s)], control


def _summary(statements: list[str]) -> list[str]:
    """"SELECT phone_numbers", "INSERT calls", ... for readable assertions."""
    out = []
    for statement in statements:
        statement = statement.removeprefix(NO_WAIT_FOR_DISK)
        verb = statement.split()[0].upper()
        table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", statement, re.IGNORECASE)
        out.append(f"{verb} {table.group(1) if table else '?'}")
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inbound_webhook_issues_at_most_five_statements(app, client, case, database_url, capsys):
    seed(app, carrier=case.name)
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        with counted(app) as seen:
            response = case.post(client, case.voice_path, case.inbound_form(case.call_id()))
    assert parse_answer(response.get_data(as_text=True))[0] == "stream"
    statements, control = _split(seen)
    # The number's read carries the agency's credential rows (carrier and Ultravox).
    assert _summary(statements) == ["SELECT phone_numbers", "INSERT calls", "UPDATE calls"]
    assert "agency_credentials" in statements[0]
    assert len(statements) <= MAX_STATEMENTS
    assert control == []  # each statement in autocommit: no connection or transaction held across Ultravox
    assert statements[1].startswith(NO_WAIT_FOR_DISK) == database_url.startswith("postgresql")
    with capsys.disabled():
        print(f"\n[{case.name}, {database_url.split(':')[0]}] {len(statements)} statements: "
              f"{', '.join(_summary(statements))} (+ {len(control)} BEGIN)")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_unknown_number_costs_one_statement(app, client, case):
    seed(app, carrier=case.name)
    with counted(app) as seen:
        response = case.post(client, case.voice_path, case.inbound_form(case.call_id(), to="+14155550177"),
                             signed=False)
    assert parse_answer(response.get_data(as_text=True))[0] == "say"
    assert _summary(_split(seen)[0]) == ["SELECT phone_numbers"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_ultravox_failure_stays_within_the_budget(app, client, case):
    seed(app, carrier=case.name)
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps, status=503)
        with counted(app) as seen:
            response = case.post(client, case.voice_path, case.inbound_form(case.call_id()))
    assert parse_answer(response.get_data(as_text=True))[0] == "say"
    assert len(_split(seen)[0]) <= MAX_STATEMENTS
