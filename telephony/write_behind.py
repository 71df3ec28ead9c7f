"""Writes nobody waits for, written in batches by one background thread per process.

The inbound webhook answers the carrier first and records Ultravox's answer on the
claimed call row afterwards (services/inbound.py): no caller waits for that write, and
if it is lost (the process dies first) the Ultravox webhook ingest rebuilds the row from
the call's metadata. Written one by one, each cost the request's thread a pooled
connection and a round trip; here a background thread gathers what arrives within
`window_seconds` and writes it as one transaction (direct_sql.run_many: for the records
of answered calls, one statement taking every row's values in arrays). A batch that fails
is written again item by item, so one bad row costs only itself (each item logs its own
failure).

The thread starts with the first write of each process (gunicorn forks its workers from
a master that built the app, and threads do not survive a fork), and what is queued
is written at interpreter exit (a graceful stop) or on `flush`.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from typing import Any, Mapping, Protocol

from sqlalchemy.engine import Engine

from . import direct_sql

log = logging.getLogger(__name__)

MAX_BATCH = 500


class Deferred(Protocol):
    """A single statement to write later. Called with an Engine, it writes itself alone
    and logs (never raises) a database error."""

    @property
    def statement(self) -> direct_sql.DirectStatement: ...

    @property
    def params(self) -> Mapping[str, Any]: ...

    def __call__(self, database: Any) -> None: ...


class WriteBehind:
    def __init__(self, engine: Engine, *, window_seconds: float) -> None:
        self.engine = engine
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.SimpleQueue[Deferred | threading.Event] = queue.SimpleQueue()

    def submit(self, item: Deferred) -> None:
        """Queue `item`; it is written within about `window_seconds`."""
        self._running().put(item)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far in this process is written (True), or
        `timeout` passes (False)."""
        if self._pid != os.getpid():
            return True  # nothing was submitted in this process
        written = threading.Event()
        self._queue.put(written)
        return written.wait(timeout)

    def _running(self) -> queue.SimpleQueue[Deferred | threading.Event]:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A new process (or the first write): its own queue and thread.
                    self._queue = queue.SimpleQueue()
                    threading.Thread(target=self._write_forever, args=(self._queue,), daemon=True,
                                     name="write-behind").start()
                    atexit.register(self.flush)
                    self._pid = os.getpid()
        return self._queue

    def _write_forever(self, items: queue.SimpleQueue[Deferred | threading.Event]) -> None:
        while True:
            batch = [items.get()]
            time.sleep(self.window_seconds)  # gather what arrives meanwhile: one transaction for all
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(items.get_nowait())
                except queue.Empty:
                    break
            writes = [item for item in batch if not isinstance(item, threading.Event)]
            try:
                self._write(writes)
            except Exception:  # never let the thread die: later writes would pile up unwritten
                log.exception("write-behind: %d writes failed", len(writes))
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()

    def _write(self, writes: list[Deferred]) -> None:
        if not writes:
            return
        try:
            direct_sql.run_many(self.engine, [(item.statement, item.params) for item in writes])
        except Exception:
            log.warning("write-behind: a batch of %d writes failed; writing them one by one", len(writes),
                        exc_info=True)
            for item in writes:
                try:
                    item(self.engine)
                except Exception:  # each logs its own database error; this is anything else
                    log.exception("write-behind: a write failed")
