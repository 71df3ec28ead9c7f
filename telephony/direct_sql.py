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

On PostgreSQL a statement made with `prepared=True` is also prepared on each connection
the first time it runs there (PREPARE, in the same query string as its first EXECUTE),
and then only EXECUTEd: the server plans it once per connection instead of on every run
(for the webhook's claim ~0.3 ms of its ~1 ms on an idle server; docs/benchmarks.md,
session 9). Behind a pooler that hands each transaction to any server connection
(PgBouncer in transaction mode) a statement prepared on one is unknown on another:
the first such error turns prepared statements off for the engine (one warning) and
the statement runs as plain SQL, at once, on the same connection. `DB_PREPARED_STATEMENTS=0`
turns them off from the start.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import re
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import psycopg2.extras
from sqlalchemy import ARRAY, String, Text, TypeDecorator, Uuid, bindparam, cast, exc, func
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

log = logging.getLogger(__name__)

Processor = Callable[[Any], Any]
# PostgreSQL: this transaction's commit does not wait for its WAL to reach the disk
# (db.commit_without_waiting_for_disk says when that is safe).
NO_WAIT_FOR_DISK = "SET LOCAL synchronous_commit TO OFF"


# Engines whose statements run unprepared (DB_PREPARED_STATEMENTS=0, or a pooler seen).
_UNPREPARED: weakref.WeakSet[Engine] = weakref.WeakSet()
_PREPARED_ON_CONNECTION = "telephony.prepared"  # key of the pooled connection's info: names prepared
_PREPARED_SQL: dict[str, str] = {}  # prepared statement name -> its plain SQL (as_planned)
_EXECUTE = re.compile(r"EXECUTE (telephony_[0-9a-f]+)\(.*\)$", re.DOTALL)


def as_planned(sql: str) -> str:
    """A statement as sent, with a prepared statement's PREPARE / EXECUTE turned back into
    its plain SQL: what it does, for logs and tests (statement counts)."""
    if sql.startswith("PREPARE telephony_"):
        sql = sql.split("; ", 1)[1]  # the EXECUTE (and its SET LOCAL) that follows
    executed = _EXECUTE.search(sql)
    if executed is None or executed[1] not in _PREPARED_SQL:
        return sql
    return sql[:executed.start()] + _PREPARED_SQL[executed[1]]


def use_prepared_statements(engine: Engine, enabled: bool) -> None:
    """Whether `prepared=True` statements are prepared on this engine's connections."""
    if enabled:
        _UNPREPARED.discard(engine)
    else:
        _UNPREPARED.add(engine)


@dataclass(frozen=True)
class _Prepared:
    """A PostgreSQL plan's PREPARE and EXECUTE forms (the EXECUTE takes the plan's arguments)."""

    name: str
    prepare: str  # PREPARE name (types) AS ... with $1.. parameters
    execute: str  # [SET LOCAL ...;] EXECUTE name(%(a)s, ...)


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
    prepared: _Prepared | None = None

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
                 wait_for_disk: bool = True, prepared: bool = False, many: DirectStatement | None = None) -> None:
        """wait_for_disk=False (PostgreSQL): the commit returns without waiting for its WAL
        to reach the disk (synchronous_commit off for this one statement's transaction,
        as db.commit_without_waiting_for_disk): visible to everyone at once and safe from
        any client dying; only a crash of the database server itself within ~600 ms
        could lose it. For writes whose loss the caller makes safe.
        prepared=True (PostgreSQL): prepared once per connection (see the module docstring).
        many (PostgreSQL): the same write for any number of rows as one statement, which
        takes each parameter of this one as an array holding every row's value (unnest);
        `run_many` runs it for a batch of this statement."""
        self._build = statement if callable(statement) and not isinstance(statement, ClauseElement) \
            else (lambda _dialect_name: statement)
        self.wait_for_disk = wait_for_disk
        self.prepared = prepared
        self.many = many
        self._plans: dict[str, _Plan] = {}

    def plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = _compile(self._build(dialect.name), dialect)
            prefix = ""
            if not self.wait_for_disk and dialect.name == "postgresql":
                # One query string, one implicit transaction: the SET LOCAL ends with it.
                prefix = f"{NO_WAIT_FOR_DISK}; "
            prepared = _prepared(plan, dialect, prefix) if self.prepared and dialect.name == "postgresql" else None
            plan = replace(plan, sql=prefix + plan.sql, prepared=prepared)
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
    selected = getattr(statement, "exported_columns", None)  # a SELECT's columns, or a DML's RETURNING
    if selected:
        row = collections.namedtuple("Row", list(selected.keys()), rename=True)  # type: ignore[misc, no-redef]
        processors = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected)
    positional = tuple(compiled.positiontup) if compiled.positional else None
    return _Plan(sql=str(compiled), binds=binds, defaults=defaults, positional=positional, row=row,
                 result_processors=processors)


_PYFORMAT = re.compile(r"%\((\w+)\)s")


def _prepared(plan: _Plan, dialect: Dialect, prefix: str) -> _Prepared:
    """PREPARE / EXECUTE forms of a compiled psycopg2 (pyformat) plan: each distinct
    parameter becomes $n, declared with its column type (an INSERT ... SELECT's select
    list would otherwise take text for every parameter)."""
    types = {name: bind.type.compile(dialect=dialect) for name, bind, _processor in plan.binds}
    order: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match[1] not in order:
            order.append(match[1])
        return f"${order.index(match[1]) + 1}"

    body = _PYFORMAT.sub(numbered, plan.sql)
    name = "telephony_" + hashlib.sha1(plan.sql.encode()).hexdigest()[:16]
    _PREPARED_SQL[name] = plan.sql
    return _Prepared(name=name, prepare=f"PREPARE {name} ({', '.join(types[n] for n in order)}) AS {body}",
                     execute=f"{prefix}EXECUTE {name}({', '.join(f'%({n})s' for n in order)})")


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
    return _run_plan(engine, plan, plan.arguments(params))


def _run_plan(engine: Engine, plan: _Plan, arguments: Any) -> Result:
    """`run`, with the plan's arguments already processed for the driver."""
    with _connection(engine, plan.sql, arguments, autocommit=True) as (connection, cursor):
        if plan.prepared is not None and engine not in _UNPREPARED:
            _execute_prepared(engine, connection, cursor, plan, arguments)
        else:
            _execute(engine, cursor, plan.sql, arguments)
        rows = plan.rows(cursor.fetchall()) if cursor.description else []
        return Result(rows=rows, rowcount=cursor.rowcount)


def _execute_prepared(engine: Engine, connection: Any, cursor: Any, plan: _Plan, arguments: Any) -> None:
    """EXECUTE the plan's prepared statement (PREPAREd first, in the same query string,
    on a connection that has not prepared it yet); plain SQL once the server shows
    prepared statements do not stay with this connection."""
    prepared = plan.prepared
    assert prepared is not None
    prepared_here: set[str] = connection.info.setdefault(_PREPARED_ON_CONNECTION, set())
    dbapi_error = engine.dialect.loaded_dbapi.Error
    if prepared.name not in prepared_here:
        try:
            _execute(engine, cursor, f"{prepared.prepare}; {prepared.execute}", arguments)
            prepared_here.add(prepared.name)
            return
        except dbapi_error as error:
            if getattr(error, "pgcode", None) != "42P05":
                raise
            # Prepared already: a first run that failed after its PREPARE (a PREPARE outlives
            # its transaction). The failed statement was its own transaction: nothing written.
            prepared_here.add(prepared.name)
    try:
        _execute(engine, cursor, prepared.execute, arguments)
    except dbapi_error as error:
        if getattr(error, "pgcode", None) != "26000":
            raise
        # Unknown here although this connection prepared it: statements do not stay with
        # their connection (a pooler in transaction mode). Nothing of it was written.
        log.warning("prepared statements do not stay with their connection here (a pooler in transaction "
                    "mode?): running statements unprepared from now on")
        use_prepared_statements(engine, False)
        _execute(engine, cursor, plan.sql, arguments)


def _execute(engine: Engine, cursor: Any, sql: str, arguments: Any) -> None:
    engine.dispatch.before_cursor_execute(None, cursor, sql, arguments, None, False)
    cursor.execute(sql, arguments)


def run_many(engine: Engine, batch: Sequence[tuple[DirectStatement, Mapping[str, Any]]]) -> None:
    """Execute a batch of (statement, params), in order, as one transaction: all or none.

    On PostgreSQL a batch of one statement is one statement sent once: alone, as it is;
    for many rows, its `many` form with every row's values in arrays (one round trip, one
    plan, and no BEGIN and COMMIT of their own). Otherwise consecutive executions of one
    statement travel together (psycopg2's execute_batch: one round trip per hundred)
    between a BEGIN and a COMMIT."""
    dialect = engine.dialect
    groups: list[tuple[DirectStatement, _Plan, list[Any]]] = []
    for statement, params in batch:
        plan = statement.plan(dialect)
        if not groups or groups[-1][1] is not plan:
            groups.append((statement, plan, []))
        groups[-1][2].append(plan.arguments(params))
    if not groups:
        return
    if dialect.name == "postgresql" and len(groups) == 1:
        statement, plan, rows = groups[0]
        if len(rows) == 1:
            _run_plan(engine, plan, rows[0])
            return
        if statement.many is not None:
            _run_rows(engine, statement.many, rows)
            return
    sql = "; ".join(plan.sql for _statement, plan, _rows in groups)
    with _connection(engine, sql, None, autocommit=False) as (_connection_, cursor):
        if dialect.name == "sqlite":
            cursor.execute("BEGIN")  # pysqlite runs in autocommit here (db.py): the batch is one transaction
        for _statement, plan, arguments in groups:
            engine.dispatch.before_cursor_execute(None, cursor, plan.sql, arguments, None, True)
            if dialect.name == "postgresql":
                psycopg2.extras.execute_batch(cursor, plan.sql, arguments)
            else:
                cursor.executemany(plan.sql, arguments)
        if dialect.name == "postgresql":
            cursor.connection.commit()
        else:
            cursor.execute("COMMIT")


def run_rows(engine: Engine, statement: DirectStatement, rows: Sequence[Mapping[str, Any]]) -> Result:
    """PostgreSQL: `statement` (which has a `many` form) for every one of `rows` (the
    params of each) as one statement and a transaction of its own; its result (RETURNING
    rows, rowcount) covers them all."""
    plan = statement.plan(engine.dialect)
    assert statement.many is not None, "run_rows needs a statement with a many form"
    return _run_rows(engine, statement.many, [plan.arguments(row) for row in rows])


def _run_rows(engine: Engine, many: DirectStatement, rows: Sequence[Mapping[str, Any]]) -> Result:
    """`many` with each of its array parameters holding every row's value (the rows
    already processed for the driver by the single-row statement's plan)."""
    plan = many.plan(engine.dialect)
    arrays = {name: [row[name] for row in rows] for name, bind, _processor in plan.binds if bind.required}
    return _run_plan(engine, plan, plan.arguments(arrays))


def unnest_rows(name: str, columns: Sequence[tuple[str, TypeEngine]]) -> TableValuedAlias:
    """PostgreSQL: the rows a `many` statement reads, `unnest(...) AS name(column, ...)`:
    one array parameter per column, named after it, holding every row's value as the
    single-row statement's plan hands it to the driver (a uuid as text, cast back here)."""
    arrays: list[ColumnElement[Any]] = []
    for column, type_ in columns:
        base = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
        if isinstance(base, Uuid):
            arrays.append(cast(bindparam(column, type_=ARRAY(Text)), ARRAY(Uuid)))
        elif isinstance(base, String):  # also Enum and Text: the driver is handed strings
            arrays.append(bindparam(column, type_=ARRAY(Text)))
        else:
            arrays.append(bindparam(column, type_=ARRAY(base)))
    return func.unnest(*arrays).table_valued(*[column for column, _type in columns]).render_derived(name=name)


def _engine_of(database: Session | Engine) -> Engine:
    engine = database.get_bind() if isinstance(database, Session) else database
    if not isinstance(engine, Engine):
        raise TypeError("a direct statement needs an Engine: it runs as a transaction of its own")
    return engine


@contextmanager
def _connection(engine: Engine, sql: str, arguments: Any, *, autocommit: bool) -> Iterator[tuple[Any, Any]]:
    """A pooled connection and a cursor on it (PostgreSQL: in autocommit if asked), given
    back as the pool handed it out; driver errors raised as SQLAlchemy's."""
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
        yield connection, cursor
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
