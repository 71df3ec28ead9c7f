"""telephony/direct_sql.py: Core statements run on the driver's connection, in autocommit,
behave like the same statements through a Session (types, defaults, errors), on SQLite
and PostgreSQL, and hand the pool back connections a Session can use."""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import pytest
from sqlalchemy import bindparam, create_engine, event, exc, select, text, update

from telephony import direct_sql
from telephony.config import Config
from telephony.db import Database, insert_for
from telephony.direct_sql import DirectStatement
from telephony.models import Agency, Call, CallDirection, CallSource

_calls = Call.__table__

INSERT_CALL = DirectStatement(lambda dialect: insert_for(dialect)(_calls).values(
    {name: bindparam(name) for name in ("id", "agency_id", "source", "direction", "carrier_call_id")})
    .on_conflict_do_nothing(index_elements=["source", "carrier_call_id"]))
READ_CALL = DirectStatement(select(_calls.c.id, _calls.c.agency_id, _calls.c.status, _calls.c.has_recording,
                                   _calls.c.metadata, _calls.c.created_at, _calls.c.updated_at, _calls.c.source)
                            .where(_calls.c.id == bindparam("id")))
SET_STATUS = DirectStatement(update(_calls).where(_calls.c.id == bindparam("call_id"))
                             .values(status=bindparam("status")))


def _agency(db: Database) -> uuid.UUID:
    with db.session() as session:
        agency = Agency(name="Direct")
        session.add(agency)
        session.flush()
        return agency.id


def _insert(db: Database, agency_id: uuid.UUID, carrier_call_id: str = "CA1",
            call_id: uuid.UUID | None = None) -> tuple[uuid.UUID, int]:
    call_id = call_id or uuid.uuid4()
    result = direct_sql.run(db.engine, INSERT_CALL, {
        "id": call_id, "agency_id": agency_id, "source": CallSource.twilio, "direction": CallDirection.inbound,
        "carrier_call_id": carrier_call_id})
    return call_id, result.rowcount


def test_insert_fills_column_defaults_and_reads_back_typed_values(db):
    agency_id = _agency(db)
    before = datetime.now(timezone.utc)
    call_id, inserted = _insert(db, agency_id)
    assert inserted == 1
    [row] = direct_sql.run(db.engine, READ_CALL, {"id": call_id}).rows
    assert isinstance(row.id, uuid.UUID) and row.id == call_id and row.agency_id == agency_id
    # Python-side defaults of the model, as the ORM would have filled them in.
    assert row.status == "created" and row.has_recording is False and row.metadata == {}
    assert row.created_at.tzinfo is not None and row.created_at >= before.replace(microsecond=0)
    assert row.source == CallSource.twilio
    with db.session() as session:  # the ORM reads the same row the same way
        call = session.get(Call, call_id)
        assert call is not None and (call.status, call.metadata_, call.created_at) == (
            row.status, row.metadata, row.created_at)


def test_on_conflict_do_nothing_reports_no_row(db):
    agency_id = _agency(db)
    first, inserted = _insert(db, agency_id, "CA-same")
    second, again = _insert(db, agency_id, "CA-same")
    assert (inserted, again) == (1, 0)
    assert direct_sql.run(db.engine, READ_CALL, {"id": second}).rows == []


def test_update_fills_onupdate_columns_and_counts_rows(db):
    agency_id = _agency(db)
    call_id, _ = _insert(db, agency_id)
    [before] = direct_sql.run(db.engine, READ_CALL, {"id": call_id}).rows
    time.sleep(0.01)
    assert direct_sql.run(db.engine, SET_STATUS, {"call_id": call_id, "status": "ringing"}).rowcount == 1
    [after] = direct_sql.run(db.engine, READ_CALL, {"id": call_id}).rows
    assert after.status == "ringing" and after.updated_at > before.updated_at
    assert direct_sql.run(db.engine, SET_STATUS, {"call_id": uuid.uuid4(), "status": "x"}).rowcount == 0


def test_a_missing_value_is_refused_before_anything_is_sent(db):
    with pytest.raises(exc.ArgumentError, match="call_id"):
        direct_sql.run(db.engine, SET_STATUS, {"status": "ringing"})


def test_driver_errors_are_sqlalchemys_and_the_connection_serves_a_session_after(database_url):
    # One pooled connection: the one the failing statement used is the Session's next.
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        agency_id = _agency(db)
        with pytest.raises(exc.IntegrityError):  # no such agency: the foreign key refuses it
            _insert(db, uuid.uuid4(), "CA-orphan")
        call_id, _ = _insert(db, agency_id, "CA-ok")
        # Back in the pool as it came out: a Session's transaction is a transaction
        # again (not autocommit), so its rollback undoes its write.
        session = db.sessionmaker()
        try:
            session.execute(update(Call).where(Call.id == call_id).values(status="completed"))
            session.rollback()
        finally:
            session.close()
        [row] = direct_sql.run(db.engine, READ_CALL, {"id": call_id}).rows
        assert row.status == "created"
    finally:
        db.dispose()


def test_a_connection_the_server_dropped_is_invalidated_and_the_next_statement_works(postgresql_url):
    # PostgreSQL only: a server that can end one client's connection from another.
    database_url = postgresql_url
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        agency_id = _agency(db)
        raw = db.engine.raw_connection()
        cursor = raw.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        [(pid,)] = cursor.fetchall()
        cursor.close()
        raw.close()  # back to the pool: the one connection the next statement gets
        admin = create_engine(database_url)
        with admin.begin() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()
        with pytest.raises(exc.OperationalError) as raised:
            _insert(db, agency_id, "CA-dropped")
        assert raised.value.connection_invalidated
        _, inserted = _insert(db, agency_id, "CA-after")  # a new connection, not the dead one
        assert inserted == 1
    finally:
        db.dispose()


def test_a_write_that_does_not_wait_for_the_disk_leaves_the_connection_as_it_was(database_url):
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        agency_id = _agency(db)
        quick = DirectStatement(INSERT_CALL._build, wait_for_disk=False)
        result = direct_sql.run(db.engine, quick, {
            "id": uuid.uuid4(), "agency_id": agency_id, "source": CallSource.twilio,
            "direction": CallDirection.inbound, "carrier_call_id": "CA-quick"})
        assert result.rowcount == 1
        if database_url.startswith("postgresql"):
            assert quick.plan(db.engine.dialect).sql.startswith("SET LOCAL synchronous_commit TO OFF; INSERT")
            with db.engine.connect() as connection:  # the same pooled connection: the setting ended
                assert connection.execute(text("SHOW synchronous_commit")).scalar() == "on"
        else:
            assert quick.plan(db.engine.dialect).sql.startswith("INSERT")
    finally:
        db.dispose()


def test_a_batch_is_one_transaction_all_or_none(db):
    agency_id = _agency(db)
    ids = [_insert(db, agency_id, f"CA-batch-{n}")[0] for n in range(3)]
    direct_sql.run_many(db.engine, [(SET_STATUS, {"call_id": i, "status": "ringing"}) for i in ids])
    assert [r.status for i in ids for r in direct_sql.run(db.engine, READ_CALL, {"id": i}).rows] == ["ringing"] * 3
    # The last row breaks a rule (a second call under an id that exists): none is written.
    with pytest.raises(exc.IntegrityError):
        direct_sql.run_many(db.engine, [(SET_STATUS, {"call_id": ids[0], "status": "completed"}),
                                        (INSERT_CALL_STRICT, {"id": ids[1], "agency_id": agency_id,
                                                              "source": CallSource.twilio,
                                                              "direction": CallDirection.inbound,
                                                              "carrier_call_id": "CA-other"})])
    [first] = direct_sql.run(db.engine, READ_CALL, {"id": ids[0]}).rows
    assert first.status == "ringing"


INSERT_CALL_STRICT = DirectStatement(lambda dialect: insert_for(dialect)(_calls).values(
    {name: bindparam(name) for name in ("id", "agency_id", "source", "direction", "carrier_call_id")}))


# -- prepared statements (PostgreSQL) ------------------------------------------------------

PREPARED_INSERT = DirectStatement(lambda dialect: insert_for(dialect)(_calls).values(
    {name: bindparam(name) for name in ("id", "agency_id", "source", "direction", "carrier_call_id")})
    .on_conflict_do_nothing(index_elements=["source", "carrier_call_id"]), wait_for_disk=False, prepared=True)
PREPARED_READ = DirectStatement(select(_calls.c.id, _calls.c.metadata, _calls.c.created_at)
                                .where(_calls.c.id == bindparam("id")), prepared=True)


@contextmanager
def sent(db: Database) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn, cursor, statement, *rest):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def _prepared_insert(db: Database, agency_id: uuid.UUID, carrier_call_id: str) -> tuple[uuid.UUID, int]:
    call_id = uuid.uuid4()
    result = direct_sql.run(db.engine, PREPARED_INSERT, {
        "id": call_id, "agency_id": agency_id, "source": CallSource.twilio, "direction": CallDirection.inbound,
        "carrier_call_id": carrier_call_id})
    return call_id, result.rowcount


def _one_connection(postgresql_url: str, **options) -> Database:
    return Database(postgresql_url, pool_size=1, max_overflow=0, **options)


def test_a_prepared_statement_is_prepared_once_per_connection_then_executed(postgresql_url):
    db = _one_connection(postgresql_url)
    try:
        agency_id = _agency(db)
        with sent(db) as statements:
            first, _ = _prepared_insert(db, agency_id, "CA-p1")
            second, inserted = _prepared_insert(db, agency_id, "CA-p2")
            _, repeated = _prepared_insert(db, agency_id, "CA-p2")
            [row] = direct_sql.run(db.engine, PREPARED_READ, {"id": second}).rows
        assert inserted == 1 and repeated == 0  # ON CONFLICT DO NOTHING, as unprepared
        assert row.id == second and row.metadata == {} and row.created_at.tzinfo is not None
        assert statements[0].startswith("PREPARE telephony_") and "EXECUTE telephony_" in statements[0]
        assert statements[1].startswith("SET LOCAL synchronous_commit TO OFF; EXECUTE telephony_")
        assert statements[3].startswith("PREPARE telephony_")  # another statement: prepared on first use
        # For logs and counts, each is the statement it runs.
        assert direct_sql.as_planned(statements[1]) == PREPARED_INSERT.plan(db.engine.dialect).sql
        assert direct_sql.as_planned(statements[0]) == direct_sql.as_planned(statements[1])
    finally:
        db.dispose()


def test_prepared_statements_that_do_not_stay_with_the_connection_turn_themselves_off(postgresql_url, caplog):
    """A pooler in transaction mode: the server connection that prepared it is not the
    one the next EXECUTE reaches. Simulated by the server forgetting it (DEALLOCATE)."""
    db = _one_connection(postgresql_url)
    try:
        agency_id = _agency(db)
        _prepared_insert(db, agency_id, "CA-q1")
        raw = db.engine.raw_connection()
        cursor = raw.cursor()
        cursor.execute("DEALLOCATE ALL")
        cursor.close()
        raw.close()
        with sent(db) as statements:
            call_id, inserted = _prepared_insert(db, agency_id, "CA-q2")
            _, after = _prepared_insert(db, agency_id, "CA-q3")
        assert inserted == 1 and after == 1
        [row] = direct_sql.run(db.engine, READ_CALL, {"id": call_id}).rows
        assert row.status == "created"
        assert "EXECUTE" in statements[0] and "EXECUTE" not in statements[1] + statements[2]
        assert [r.getMessage() for r in caplog.records if r.name == "telephony.direct_sql"] == [
            "prepared statements do not stay with their connection here (a pooler in transaction mode?): "
            "running statements unprepared from now on"]
    finally:
        db.dispose()


def test_a_first_run_that_failed_after_its_prepare_does_not_turn_them_off(postgresql_url):
    db = _one_connection(postgresql_url)
    try:
        agency_id = _agency(db)
        with pytest.raises(exc.IntegrityError):  # no such agency: the row is refused, the PREPARE stays
            _prepared_insert(db, uuid.uuid4(), "CA-r1")
        with sent(db) as statements:
            _, inserted = _prepared_insert(db, agency_id, "CA-r2")
            _, next_one = _prepared_insert(db, agency_id, "CA-r3")
        assert inserted == 1 and next_one == 1
        assert statements[-1].startswith("SET LOCAL synchronous_commit TO OFF; EXECUTE telephony_")
        assert db.engine not in direct_sql._UNPREPARED
    finally:
        db.dispose()


def test_db_prepared_statements_off_runs_plain_sql(postgresql_url, tmp_path):
    db = _one_connection(postgresql_url, prepared_statements=False)
    try:
        agency_id = _agency(db)
        with sent(db) as statements:
            _, inserted = _prepared_insert(db, agency_id, "CA-s1")
        assert inserted == 1 and statements == [PREPARED_INSERT.plan(db.engine.dialect).sql]
    finally:
        db.dispose()
    assert Config.from_env({"DB_PREPARED_STATEMENTS": "0"}, instance_path=tmp_path).db_prepared_statements is False
    assert Config.from_env({}, instance_path=tmp_path).db_prepared_statements is True
