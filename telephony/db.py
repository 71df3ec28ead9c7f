"""Engine and session handling.

Plain SQLAlchemy 2: one Engine per process, one Session per request (kept on
flask.g and closed at teardown) or per unit of work in the worker and CLI.
"""
from __future__ import annotations

import functools
import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator, cast

from flask import current_app, g
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.orm import Session, sessionmaker

from . import direct_sql
from .config import DatabaseTimeouts
from .direct_sql import NO_WAIT_FOR_DISK
from .write_behind import Deferred, WriteBehind


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20,
                timeouts: DatabaseTimeouts | None = None, prepared_statements: bool = True) -> Engine:
    if url.startswith("sqlite"):
        # check_same_thread=False: gunicorn threads share the pool; SQLite
        # serialises writers itself and busy_timeout makes them wait, not fail.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        # SQLAlchemy's documented pysqlite recipe: let SQLAlchemy emit BEGIN
        # itself so transactions and SAVEPOINTs behave as on PostgreSQL.
        @event.listens_for(engine, "connect")
        def _sqlite_no_autobegin(dbapi_connection, _record):  # pragma: no cover - trivial
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - trivial
            conn.exec_driver_sql("BEGIN")

        return engine
    timeouts = timeouts or DatabaseTimeouts()
    # Every wait is bounded (config.DatabaseTimeouts): a server that accepts connections
    # and never answers costs a request at most `connect` (+ `pool` when all are busy)
    # seconds, then an OperationalError / TimeoutError the callers answer safely.
    connect_args: dict[str, Any] = {
        "connect_timeout": timeouts.connect,
        "options": f"-c statement_timeout={timeouts.statement_ms} -c lock_timeout={timeouts.lock_ms}"}
    if "gssencmode" not in url:
        # libpq tries Kerberos (GSSAPI) encryption first by default, which loads the
        # Kerberos libraries into every process (~1 MB each) for deployments that never use
        # it; a DATABASE_URL that needs it says ?gssencmode=prefer (or require).
        connect_args["gssencmode"] = "disable"
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=timeouts.pool,
                           connect_args=connect_args)
    _ping_idle_connections(engine)
    direct_sql.use_prepared_statements(engine, prepared_statements)
    return engine


# A pooled connection unused for this long is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 10.0


def _ping_idle_connections(engine: Engine) -> None:
    """pool_pre_ping, but only for connections that sat idle: pinging on every checkout
    costs a round trip per transaction (two per inbound webhook) on the hot path. A
    connection used moments ago is alive, and if the server went away since, the
    statement's disconnect error makes SQLAlchemy invalidate the whole pool, so only
    the requests in flight at that moment see it."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:
        record.info["telephony.checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy) -> None:
        checked_in = record.info.get("telephony.checked_in")
        if checked_in is None or time.monotonic() - checked_in < PING_AFTER_IDLE_SECONDS:
            return  # a new connection, or one just used
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except Exception as error:  # the driver's own error types differ; any failure means dead
            # The pool discards this connection and checks out (or opens) another.
            raise exc.DisconnectionError() from error


class Database:
    def __init__(self, url: str, *, write_behind_seconds: float = 0.0, **engine_options) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_options)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # Writes nobody waits for (write_later): batched by a background thread when a
        # window is set (WRITE_BEHIND_MS), else written at once by the caller's thread.
        # Not on SQLite (development): it has one writer at a time, and a request whose
        # read must turn into a write fails at once ("database is locked", no busy wait)
        # if another connection wrote meanwhile, so a background writer committing at
        # moments of its own would fail other requests' transactions.
        self.write_behind = WriteBehind(self.engine, window_seconds=write_behind_seconds) \
            if write_behind_seconds > 0 and self.engine.dialect.name != "sqlite" else None

    def write_later(self, item: Deferred) -> None:
        """A write whose result nobody waits for (telephony/write_behind.py). Never raises
        for a database error: the item logs its own."""
        if self.write_behind is not None:
            self.write_behind.submit(item)
        else:
            item(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        if self.write_behind is not None:
            self.write_behind.flush()
        self.engine.dispose()


def get_db() -> Database:
    return current_app.extensions["telephony.db"]


def get_session() -> Session:
    """The request's session, created on first use."""
    if "db_session" not in g:
        g.db_session = get_db().sessionmaker()
    return g.db_session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()  # an uncommitted transaction is rolled back here


def commit_without_waiting_for_disk(session: Session) -> None:
    """PostgreSQL: this transaction's COMMIT returns without waiting for its WAL to be
    flushed to disk (SET LOCAL synchronous_commit = off). The commit is visible to every
    session at once and survives any client dying; only a crash of the database server
    itself within the WAL writer's delay (at most 3 x wal_writer_delay, 600 ms by
    default) could lose it. Use only where the caller makes that case safe. SQLite: no-op."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(NO_WAIT_FOR_DISK))


def rows_affected(result: Result[Any]) -> int:
    """The number of rows an UPDATE or DELETE matched. Session.execute is typed as
    returning a Result, but for DML statements it is a CursorResult, which carries the
    DBAPI cursor's rowcount."""
    return cast(CursorResult[Any], result).rowcount


def dialect_insert(session: Session):
    """The INSERT construct with ON CONFLICT for the session's database
    (SQLite needs >= 3.35 for ON CONFLICT ... RETURNING)."""
    return insert_for(session.get_bind().dialect.name)


def insert_for(dialect_name: str):
    """The INSERT construct with ON CONFLICT of the named dialect (PostgreSQL's, else SQLite's)."""
    return (postgresql if dialect_name == "postgresql" else sqlite).insert


def insert_if_absent(session: Session, model: type, values: dict[str, Any], conflict_columns: list[str]) -> bool:
    """INSERT ... ON CONFLICT (conflict_columns) DO NOTHING: True if this call inserted
    the row, False if a row with the same unique key already existed. `values` are
    keyed by column name; column defaults (ids, timestamps) apply as usual.

    One atomic statement, so concurrent requests racing for the same key (duplicate
    carrier webhooks, repeated webhook events) have exactly one winner on PostgreSQL
    and SQLite alike, and the caller's transaction stays usable (no IntegrityError).
    """
    table = model.__table__  # type: ignore[attr-defined]
    statement = _insert_if_absent_statement(table, session.get_bind().dialect.name, tuple(conflict_columns))
    return session.execute(statement, values).first() is not None


@functools.lru_cache(maxsize=32)
def _insert_if_absent_statement(table: Any, dialect_name: str, conflict_columns: tuple[str, ...]) -> Any:
    # Built once per table and dialect (webhooks are a hot path); values are bound per
    # execution. A Core statement: no ORM bookkeeping for a row nobody loads.
    return (insert_for(dialect_name)(table).on_conflict_do_nothing(index_elements=list(conflict_columns))
            .returning(*table.primary_key.columns))


def end_reads_before_writing(session: Session) -> None:
    """SQLite cannot turn a read snapshot into a write once another connection has
    written meanwhile (it fails at once with "database is locked"; busy_timeout does
    not apply), so there a write opens a transaction of its own. PostgreSQL (READ
    COMMITTED) has no such limit, and keeping the reads and the write in one
    transaction saves a pool checkout, its ping and a BEGIN/ROLLBACK round trip."""
    if session.get_bind().dialect.name == "sqlite":
        session.rollback()


def end_read(session: Session) -> None:
    """End the session's read-only transaction (a rollback: nothing was written in it).

    No snapshot, row lock or connection is held past this point, and the next statement
    starts a new transaction that sees everything committed meanwhile. On SQLite it also
    keeps a read from turning into a write: a transaction that began with a read cannot
    take the write lock if another connection wrote since, so a write that follows a read
    must open its own transaction."""
    session.rollback()


@contextmanager
def transaction(session: Session) -> Iterator[None]:
    """The block is one transaction (or the rest of the one already open): committed
    when the block ends, rolled back if it raises (the exception goes on)."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def rollback_quietly(session: Session) -> None:
    """Roll back where the database may be gone (after a failed write, in a catch-all):
    a failing rollback is logged, not raised over the error being handled."""
    try:
        session.rollback()
    except exc.SQLAlchemyError:
        logging.getLogger(__name__).warning("rollback failed (database unreachable?)", exc_info=True)
