"""Claims of concurrent inbound webhooks written together (services/claims.py ClaimBatch).

PostgreSQL only (on SQLite the claim is written alone). Batches are made deterministic by
holding the first statement until the other claims are waiting behind it.
"""
from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from telephony import direct_sql
from telephony.models import Agency, Call, CallDirection, CallSource
from telephony.services import claims
from tests.inbound_helpers import seed


@pytest.fixture
def agency(app, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("claims are batched on PostgreSQL only")
    seeded = seed(app, carrier="twilio")
    with app.extensions["telephony.db"].session() as session:
        version = session.scalar(select(Agency.route_version).where(Agency.id == seeded.agency_id))
    return seeded, version


def _params(seeded, version: int, carrier_call_id: str | None = None) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "agency_id": seeded.agency_id, "agent_id": seeded.agent_id,
            "source": CallSource.twilio, "direction": CallDirection.inbound, "from_number": "+14155550199",
            "to_number": seeded.number, "carrier_call_id": carrier_call_id or "CA" + uuid.uuid4().hex,
            "status": "created", "route_version": version}


def _claim_together(app, monkeypatch, params: list[dict[str, Any]]) -> tuple[list[Any], list[int]]:
    """Claim all of `params` from threads, the first statement held until the others
    wait behind it. Returns each claim's result (or exception) and the number of claims
    each statement wrote."""
    batch = claims.claim_batch_of(app)
    assert batch is not None
    sizes: list[int] = []
    release = threading.Event()
    run, run_rows = direct_sql.run, direct_sql.run_rows

    def hold_the_first() -> None:
        if len(sizes) == 1:
            release.wait(10)

    def held_run(database, statement, params):  # a claim written alone
        sizes.append(1)
        hold_the_first()
        return run(database, statement, params)

    def held_run_rows(engine, statement, rows):  # a batch
        sizes.append(len(rows))
        hold_the_first()
        return run_rows(engine, statement, rows)

    monkeypatch.setattr(direct_sql, "run", held_run)
    monkeypatch.setattr(direct_sql, "run_rows", held_run_rows)
    results: list[Any] = [None] * len(params)

    def claim(i: int) -> None:
        try:
            results[i] = batch.claim(params[i])
        except Exception as exc:  # noqa: BLE001 - the test reads it
            results[i] = exc

    threads = [threading.Thread(target=claim, args=(0,))]
    threads[0].start()
    while not sizes:
        threading.Event().wait(0.001)
    threads += [threading.Thread(target=claim, args=(i,)) for i in range(1, len(params))]
    for thread in threads[1:]:
        thread.start()
    while len(batch._waiting) < len(params) - 1:  # the others queue behind the held statement
        threading.Event().wait(0.001)
    release.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    return results, sizes


def test_claims_arriving_together_are_written_by_one_statement(app, agency, monkeypatch):
    seeded, version = agency
    params = [_params(seeded, version) for _ in range(6)]
    results, sizes = _claim_together(app, monkeypatch, params)
    assert results == [True] * 6
    assert sizes == [1, 5]  # the first alone, the five that waited behind it together
    with app.extensions["telephony.db"].session() as session:
        stored = set(session.scalars(select(Call.id)))
    assert stored == {p["id"] for p in params}


def test_each_claim_of_a_batch_gets_its_own_answer(app, agency, monkeypatch):
    seeded, version = agency
    twice = "CA" + uuid.uuid4().hex
    params = [_params(seeded, version), _params(seeded, version, twice), _params(seeded, version, twice),
              _params(seeded, version - 1), _params(seeded, version)]
    results, sizes = _claim_together(app, monkeypatch, params)
    # The second delivery of one carrier call loses to the first; a stale route inserts nothing.
    assert results == [True, True, False, False, True] and sizes == [1, 4]
    with app.extensions["telephony.db"].session() as session:
        assert session.scalar(select(Call.id).where(Call.carrier_call_id == twice)) == params[1]["id"]


def test_a_failed_batch_fails_each_of_its_claims_and_the_next_claims_work(app, agency, monkeypatch):
    seeded, version = agency
    run_rows = direct_sql.run_rows
    failed = []

    def fails_once(engine, statement, rows):
        if not failed:
            failed.append(len(rows))
            raise OperationalError("INSERT INTO calls ...", {}, Exception("server closed the connection"))
        return run_rows(engine, statement, rows)

    monkeypatch.setattr(direct_sql, "run_rows", fails_once)
    results, sizes = _claim_together(app, monkeypatch, [_params(seeded, version) for _ in range(4)])
    assert results[0] is True and sizes == [1, 3] and failed == [3]
    assert all(isinstance(r, OperationalError) for r in results[1:])
    batch = claims.claim_batch_of(app)
    assert batch.claim(_params(seeded, version)) is True and not batch._writing
    again, sizes = _claim_together(app, monkeypatch, [_params(seeded, version) for _ in range(3)])
    assert again == [True] * 3 and sizes == [1, 2]


def test_a_forked_child_starts_with_no_claims_of_its_parent(app, agency):
    seeded, version = agency
    batch = claims.claim_batch_of(app)
    batch._waiting.append(object())  # as if a parent's thread were waiting when the process forked
    batch._writing = True
    batch._pid = -1
    assert batch.claim(_params(seeded, version)) is True
    assert batch._waiting == [] and not batch._writing


def test_the_engines_listeners_see_each_statement_alone_or_batched(app, agency, monkeypatch):
    seeded, version = agency
    seen: list[str] = []
    engine = app.extensions["telephony.db"].engine
    listener = lambda conn, cursor, statement, *rest: seen.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        results, sizes = _claim_together(app, monkeypatch, [_params(seeded, version) for _ in range(3)])
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert results == [True] * 3 and sizes == [1, 2] and len(seen) == 2
    assert "WHERE agencies.id" in seen[0] and "RETURNING calls.id" not in seen[0]  # alone
    assert "FROM unnest(" in seen[1] and "RETURNING calls.id" in seen[1]  # together
