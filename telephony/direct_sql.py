"""Single statements of the inbound webhook's hot path, run on the driver's own connection.

An inbound webhook runs three statements (read the number's route, claim the call row,
record Ultravox's answer). Through a Session each one paid SQLAlchemy's execution path
(transaction bookkeeping, execution context, result objects) and, on PostgreSQL, a
BEGIN and a COMMIT round trip of its own: together more CPU than the rest of the
service's work per webhook (docs/benchmarks.md, "Where the service's CPU goes").

A `DirectStatement` is the same Core construct (tables, columns and types stay defined
once, in telephony/models), compiled once per dialect. `run` checks a connection out of
the engine's pool (with its usual events: the ping of an idle connection), executes
the statement in autocommit (one statement is one transaction, one round trip), and
gives the connection back. Values pass through the columns' own type processors, and
column defaults (`default=` / `onupdate=`) are filled in as SQLAlchemy would; a
driver error comes out as SQLAlchemy's (OperationalError, IntegrityError, ...), so
callers handle the database as anywhere else, and a connection the driver reports
dead is invalidated rather than pooled again. The engine's `before_cursor_execute`
listeners are told of each statement, as for any other.

Use it only for a statement that is a whole transaction by itself.
"""
from __future__ import annotations

import collections
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import psycopg2.extras
from sqlalchemy import exc
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

Processor = Callable[[Any], Any]
# PostgreSQL: this transaction's commit does not wait for its WAL to reach the disk
# (db.commit_without_waiting_for_disk says when that is safe).
NO_WAIT_FOR_DISK = "SET LOCAL synchronous_commit TO OFF"


class Result(NamedTuple):
    rows: list[Any]  # named tuples, one field per selected column (empty for DML)
    rowcount: int  # rows inserted / updated / deleted (DML)


@dataclass(frozen=True)
class _Plan:
    """A statement compiled for one dialect, with what it takes to bind and read it."""

    sql: str
    binds: tuple[tuple[str, Any, Processor | None], ...]  # name, BindParameter, processor
    defaults: Mapping[str, Callable[[], Any]]  # column defaults SQLAlchemy fills in per execution
    positional: tuple[str, ...] | None  # the order of the values (qmark drivers), else named
    row: Any  # the named-tuple type of a result row, or None
    result_processors: tuple[Processor | None, ...]

    def arguments(self, params: Mapping[str, Any]) -> Any:
        values: dict[str, Any] = {}
        for name, bind, processor in self.binds:
            if name in params:
                value = params[name]
            elif name in self.defaults:
                value = self.defaults[name]()
            elif bind.callable is not None:
                value = bind.callable()
            elif not bind.required:
                value = bind.value
            else:
                raise exc.ArgumentError(f"a value is required for bind parameter {name!r}")
            values[name] = processor(value) if processor is not None else value
        if self.positional is not None:
            return [values[name] for name in self.positional]
        return values

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[Any]:
        processors = self.result_processors
        return [self.row(*[p(v) if p is not None else v for p, v in zip(processors, raw)]) for raw in fetched]


class DirectStatement:
    """A Core statement (or a function of the dialect's name building one, for
    dialect-specific constructs such as INSERT ... ON CONFLICT), compiled on first use
    per dialect."""

    def __init__(self, statement: ClauseElement | Callable[[str], ClauseElement], *,
                 wait_for_disk: bool = True) -> None:
        """wait_for_disk=False (PostgreSQL): the commit returns without waiting for its WAL
        to reach the disk (synchronous_commit off for this one statement's transaction,
        as db.commit_without_waiting_for_disk): visible to everyone at once and safe from
        any client dying; only a crash of the database server itself within ~600 ms
        could lose it. For writes whose loss the caller makes safe."""
        self._build = statement if callable(statement) and not isinstance(statement, ClauseElement) \
            else (lambda _dialect_name: statement)
        self.wait_for_disk = wait_for_disk
        self._plans: dict[str, _Plan] = {}

    def plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = _compile(self._build(dialect.name), dialect)
            if not self.wait_for_disk and dialect.name == "postgresql":
                # One query string, one implicit transaction: the SET LOCAL ends with it.
                plan = replace(plan, sql=f"{NO_WAIT_FOR_DISK}; {plan.sql}")
            self._plans[dialect.name] = plan
        return plan


def _compile(statement: Any, dialect: Dialect) -> _Plan:
    compiled = statement.compile(dialect=dialect)
    binds = tuple((name, bind, bind.type.dialect_impl(dialect).bind_processor(dialect))
                  for bind, name in compiled.bind_names.items())
    defaults: dict[str, Callable[[], Any]] = {}
    for column in compiled.insert_prefetch:
        defaults[column.key] = _default_of(column.default)
    for column in compiled.update_prefetch:
        defaults[column.key] = _default_of(column.onupdate)
    row: Any = None
    processors: tuple[Processor | None, ...] = ()
    selected = getattr(statement, "selected_columns", None)
    if selected is not None:
        row = collections.namedtuple("Row", list(selected.keys()), rename=True)  # type: ignore[misc, no-redef]
        processors = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected)
    positional = tuple(compiled.positiontup) if compiled.positional else None
    return _Plan(sql=str(compiled), binds=binds, defaults=defaults, positional=positional, row=row,
                 result_processors=processors)


def _default_of(default: Any) -> Callable[[], Any]:
    # SQLAlchemy wraps a callable default to take its execution context; none of ours reads it.
    if default.is_callable:
        return lambda: default.arg(None)
    value = default.arg
    return lambda: value


def run(database: Session | Engine, statement: DirectStatement, params: Mapping[str, Any]) -> Result:
    """Execute `statement` with `params` as a transaction of its own, on a connection of
    the engine's pool (a Session's engine: not in the Session's transaction)."""
    engine = _engine_of(database)
    plan = statement.plan(engine.dialect)
    arguments = plan.arguments(params)
    with _connection(engine, plan.sql, arguments, autocommit=True) as cursor:
        engine.dispatch.before_cursor_execute(None, cursor, plan.sql, arguments, None, False)
        cursor.execute(plan.sql, arguments)
        rows = plan.rows(cursor.fetchall()) if cursor.description else []
        return Result(rows=rows, rowcount=cursor.rowcount)


def run_many(engine: Engine, batch: Sequence[tuple[DirectStatement, Mapping[str, Any]]]) -> None:
    """Execute a batch of (statement, params), in order, as one transaction: all or none.
    On PostgreSQL consecutive executions of one statement travel together (psycopg2's
    execute_batch: one round trip per hundred), so a batch costs a few round trips."""
    dialect = engine.dialect
    groups: list[tuple[_Plan, list[Any]]] = []
    for statement, params in batch:
        plan = statement.plan(dialect)
        if not groups or groups[-1][0] is not plan:
            groups.append((plan, []))
        groups[-1][1].append(plan.arguments(params))
    if not groups:
        return
    sql = "; ".join(plan.sql for plan, _ in groups)
    with _connection(engine, sql, None, autocommit=False) as cursor:
        if dialect.name == "sqlite":
            cursor.execute("BEGIN")  # pysqlite runs in autocommit here (db.py): the batch is one transaction
        for plan, arguments in groups:
            engine.dispatch.before_cursor_execute(None, cursor, plan.sql, arguments, None, True)
            if dialect.name == "postgresql":
                psycopg2.extras.execute_batch(cursor, plan.sql, arguments)
            else:
                cursor.executemany(plan.sql, arguments)
        if dialect.name == "postgresql":
            cursor.connection.commit()
        else:
            cursor.execute("COMMIT")


def run_values(engine: Engine, sql: str, template: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """PostgreSQL: one statement whose `VALUES %s` takes every row (psycopg2's
    execute_values, each row through `template`), as a transaction of its own; returns
    the rows of its RETURNING clause. `rows` hold values already processed for the
    driver (a plan's `arguments`)."""
    with _connection(engine, sql, None, autocommit=True) as cursor:
        engine.dispatch.before_cursor_execute(None, cursor, sql, rows, None, True)
        return psycopg2.extras.execute_values(cursor, sql, rows, template=template, page_size=max(len(rows), 1),
                                              fetch=True)


def _engine_of(database: Session | Engine) -> Engine:
    engine = database.get_bind() if isinstance(database, Session) else database
    if not isinstance(engine, Engine):
        raise TypeError("a direct statement needs an Engine: it runs as a transaction of its own")
    return engine


@contextmanager
def _connection(engine: Engine, sql: str, arguments: Any, *, autocommit: bool) -> Iterator[Any]:
    """A cursor on a pooled connection (PostgreSQL: in autocommit if asked), given back
    as the pool handed it out; driver errors raised as SQLAlchemy's."""
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        connection = engine.raw_connection()
    except dbapi_error as error:  # could not connect (the pool's own timeout is SQLAlchemy's already)
        raise exc.DBAPIError.instance(sql, arguments, error, dbapi_error, dialect=dialect) from error
    postgresql = dialect.name == "postgresql"
    cursor = None
    try:
        if postgresql:
            # A pooled connection was rolled back on its return, but a new one comes out of
            # SQLAlchemy's first-connect queries inside a transaction: end it (psycopg2 sends
            # nothing when there is none), then flip psycopg2's own flag (no round trip).
            driver = connection.driver_connection
            driver.rollback()  # type: ignore[union-attr]
            driver.autocommit = autocommit  # type: ignore[union-attr]
        cursor = connection.cursor()
        yield cursor
    except dbapi_error as error:
        invalidated = dialect.is_disconnect(error, connection, cursor)
        if invalidated:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(sql, arguments, error, dbapi_error, connection_invalidated=invalidated,
                                      dialect=dialect) from error
    finally:
        _give_back(connection, cursor, postgresql, dbapi_error)


def _give_back(connection: Any, cursor: Any, postgresql: bool, dbapi_error: type[Exception]) -> None:
    """Back to the pool as the pool handed it out (a Session expects transactions; the
    pool rolls back whatever a failed batch left open)."""
    try:
        if cursor is not None:
            cursor.close()
        if postgresql and connection.is_valid:
            connection.driver_connection.autocommit = False
    except dbapi_error as error:
        connection.invalidate(error)  # a connection in an unknown state is not pooled again
    connection.close()
