"""telephony/write_behind.py: the records of answered inbound calls, batched by a
background thread per process (WRITE_BEHIND_MS) on PostgreSQL; on SQLite (development,
one writer at a time) they are written at once."""
from __future__ import annotations

import logging
import multiprocessing
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
import responses
from sqlalchemy import event, select

from telephony import direct_sql
from telephony.db import Database
from telephony.models import Agency, Call, CallDirection, CallSource
from telephony.services import calls as call_service
from tests.inbound_helpers import JOIN_URL, TwilioCase, UltravoxMock, parse_answer, seed
from tests.test_direct_sql import INSERT_CALL

ROOT = Path(__file__).resolve().parent.parent


def _claimed_calls(db: Database, count: int) -> list[uuid.UUID]:
    with db.session() as session:
        agency = Agency(name="Write behind")
        session.add(agency)
        session.flush()
        agency_id = agency.id
    ids = [uuid.uuid4() for _ in range(count)]
    for call_id in ids:
        direct_sql.run(db.engine, INSERT_CALL, {"id": call_id, "agency_id": agency_id, "source": CallSource.twilio,
                                                "direction": CallDirection.inbound, "carrier_call_id": str(call_id)})
    return ids


def _started(call_id: uuid.UUID, ultravox_call_id: str | None = None) -> call_service.CallRecord:
    return call_service.CallRecord(call_id, call_service._RECORD_STARTED, {
        "call_id": call_id, "ultravox_call_id": ultravox_call_id or f"uv-{call_id}", "join_url": f"wss://j/{call_id}"})


def _rows(db: Database) -> dict[uuid.UUID, Call]:
    with db.session() as session:
        return {call.id: call for call in session.scalars(select(Call))}


def test_writes_arriving_together_are_one_batch(postgresql_url):
    database_url = postgresql_url
    db = Database(database_url, write_behind_seconds=0.2)
    try:
        ids = _claimed_calls(db, 25)
        executions: list[str] = []

        def seen(conn, cursor, sql, params, context, many):
            executions.append(direct_sql.as_planned(sql))

        event.listen(db.engine, "before_cursor_execute", seen)
        for call_id in ids:
            db.write_later(_started(call_id))
        assert db.write_behind is not None and db.write_behind.flush()
        event.remove(db.engine, "before_cursor_execute", seen)
        rows = _rows(db)
        assert all((rows[i].status, rows[i].ultravox_call_id, rows[i].join_url) ==
                   ("ringing", f"uv-{i}", f"wss://j/{i}") for i in ids)
        # 25 updates, one statement (the rows' values in arrays), no BEGIN or COMMIT of its own
        [execution] = executions
        assert execution.count("UPDATE calls") == 1 and "FROM unnest(" in execution
    finally:
        db.dispose()


@pytest.mark.parametrize("prepared", [True, False])
@pytest.mark.parametrize("together", [False, True])
def test_a_batch_moves_on_only_calls_still_waiting(postgresql_url, together, prepared):
    """A status callback may have moved a call on while Ultravox answered: the record makes
    only a "created" call "ringing", and a call that ended keeps its status and no joinUrl,
    alone (the single-row statement) or in a batch (the one that takes arrays), prepared or
    as plain SQL (behind a transaction-mode pooler)."""
    db = Database(postgresql_url, write_behind_seconds=0.2)
    direct_sql.use_prepared_statements(db.engine, prepared)
    try:
        ids = _claimed_calls(db, 4)
        ended, in_progress, waiting = ids[0], ids[1], ids[2:]
        with db.session() as session:
            session.get(Call, ended).status = "completed"
            session.get(Call, in_progress).status = "in-progress"
            session.commit()
        for call_id in ids:
            db.write_later(_started(call_id))
            if not together:  # each alone: a batch of one
                assert db.write_behind is not None and db.write_behind.flush()
        assert db.write_behind is not None and db.write_behind.flush()
        found = _rows(db)
        assert (found[ended].status, found[ended].join_url, found[ended].ultravox_call_id) == \
            ("completed", None, f"uv-{ended}")
        assert (found[in_progress].status, found[in_progress].join_url) == ("in-progress", f"wss://j/{in_progress}")
        assert all((found[i].status, found[i].join_url) == ("ringing", f"wss://j/{i}") for i in waiting)
        assert all(found[i].updated_at >= found[i].created_at for i in ids)
    finally:
        db.dispose()


def test_a_batch_of_both_kinds_of_record_is_written_whole(postgresql_url):
    """Records of answered calls and of calls Ultravox refused, queued together: one
    transaction of two statements, each with its rows."""
    db = Database(postgresql_url, write_behind_seconds=0.2)
    try:
        answered, refused, also_answered = _claimed_calls(db, 3)
        failure = call_service.CallRecord(refused, call_service._RECORD_FAILURE, {
            "call_id": refused, "metadata": {"start_error": "UltravoxServerError"}})
        for record in (_started(answered), failure, _started(also_answered)):
            db.write_later(record)
        assert db.write_behind is not None and db.write_behind.flush()
        rows = _rows(db)
        assert all((rows[i].status, rows[i].join_url) == ("ringing", f"wss://j/{i}") for i in (answered, also_answered))
        assert rows[refused].metadata_ == {"start_error": "UltravoxServerError"} and rows[refused].join_url is None
    finally:
        db.dispose()


def test_a_row_that_fails_costs_only_itself(postgresql_url, caplog):
    database_url = postgresql_url
    db = Database(database_url, write_behind_seconds=0.2)
    try:
        first, second, third = _claimed_calls(db, 3)
        # The second takes an Ultravox id the first has (unique): it alone cannot be written.
        for record in (_started(first, "uv-same"), _started(second, "uv-same"), _started(third)):
            db.write_later(record)
        with caplog.at_level(logging.WARNING):
            assert db.write_behind is not None and db.write_behind.flush()
        rows = _rows(db)
        assert (rows[first].ultravox_call_id, rows[third].status) == ("uv-same", "ringing")
        assert rows[second].ultravox_call_id is None and rows[second].status == "created"
        assert f"call {second}: could not store the outcome" in caplog.text
    finally:
        db.dispose()


def test_what_is_queued_is_written_when_the_process_exits(postgresql_url):
    database_url = postgresql_url
    db = Database(database_url)
    try:
        [call_id] = _claimed_calls(db, 1)
    finally:
        db.dispose()
    # A process that queues a write with a long window and exits at once (a graceful stop).
    script = textwrap.dedent(f"""
        import uuid, sys
        from telephony.db import Database
        from tests.test_write_behind import _started
        db = Database({database_url!r}, write_behind_seconds=0.5)
        db.write_later(_started(uuid.UUID({str(call_id)!r})))
        sys.exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
    db = Database(database_url)
    try:
        assert _rows(db)[call_id].status == "ringing"
    finally:
        db.dispose()


def _write_in_child(call_id: str) -> None:
    parent_db = _PARENT[0]  # the parent's object, in a forked child
    parent_db.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    parent_db.write_later(_started(uuid.UUID(call_id)))
    assert parent_db.write_behind is not None and parent_db.write_behind.flush()


_PARENT: list[Database] = []


def test_a_forked_process_writes_with_a_thread_of_its_own(postgresql_url):
    database_url = postgresql_url
    # gunicorn forks workers from a master that built the app; a thread started before
    # the fork does not exist in the child.
    db = Database(database_url, write_behind_seconds=0.05)
    try:
        before, after = _claimed_calls(db, 2)
        db.write_later(_started(before))  # starts the parent's thread
        assert db.write_behind is not None and db.write_behind.flush()
        _PARENT[:] = [db]
        child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(str(after),))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert _rows(db)[after].status == "ringing"
    finally:
        _PARENT.clear()
        db.dispose()


def test_sqlite_writes_at_once(sqlite_url):
    db = Database(sqlite_url, write_behind_seconds=0.5)
    try:
        assert db.write_behind is None
        [call_id] = _claimed_calls(db, 1)
        db.write_later(_started(call_id))
        assert _rows(db)[call_id].status == "ringing"
    finally:
        db.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_inbound_answer_is_recorded_by_the_write_behind(app, client):
    app.extensions["telephony.db"].dispose()
    database = Database(app.extensions["telephony.config"].database_url, write_behind_seconds=0.5)
    app.extensions["telephony.db"] = database
    case = TwilioCase()
    seed(app, carrier=case.name)
    call_sid = case.call_id()
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        body = urlencode(case.inbound_form(call_sid)).encode()
        response = client.post(case.voice_path, data=body, buffered=False,
                               content_type="application/x-www-form-urlencoded",
                               headers=case.sign(case.voice_path, case.inbound_form(call_sid), body))
        assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)
        response.close()  # the answer is out: its record is queued, not yet written
    [queued] = _rows(database).values()
    assert (queued.status, queued.join_url) == ("created", None)
    assert database.write_behind is not None and database.write_behind.flush()
    [recorded] = _rows(database).values()
    assert (recorded.status, recorded.join_url) == ("ringing", JOIN_URL) and recorded.ultravox_call_id
