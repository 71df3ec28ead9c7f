"""Structured JSON logs with the request id and, where known, agency and call ids.

The ids live in context variables set by the request hooks (and by the worker
per job), and a filter copies them onto every record, so any module can just
`log.info(...)` and the line is correlated.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import threading
import time
from contextvars import ContextVar
from datetime import datetime, timezone

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
agency_id_var: ContextVar[str | None] = ContextVar("agency_id", default=None)
call_id_var: ContextVar[str | None] = ContextVar("call_id", default=None)

_CONTEXT = (("request_id", request_id_var), ("agency_id", agency_id_var), ("call_id", call_id_var))
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test capture, gunicorn).

    In a web worker (`write_in_background`, from gunicorn.conf.py) a line is formatted by
    the thread that logs it, then queued, and one background thread writes whatever is
    queued in one go: with 128 request threads each line used to take the handler's lock
    around a write to stderr, and the threads queued on that lock (~5 % of a webhook's CPU
    went to handing it over). Lines at WARNING and above are written at once, after every
    line queued before them; queued lines are written at exit."""

    def __init__(self) -> None:
        super().__init__()
        self._background = False
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._writing = threading.Lock()  # one writer at a time: lines keep their order
        self._pid: int | None = None

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def write_in_background(self) -> None:
        self._background = True

    def handle(self, record: logging.LogRecord) -> bool:
        if not self._background:
            return bool(super().handle(record))
        if not self.filter(record):
            return False
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return True
        self._queue().put(line)
        if record.levelno >= logging.WARNING:
            self.flush_queued()
        return True

    def flush_queued(self) -> None:
        """Write every queued line now."""
        with self._writing:
            lines = []
            while True:
                try:
                    lines.append(self._lines.get_nowait())
                except queue.Empty:
                    break
            if lines:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except Exception:  # stderr closed or broken: nowhere left to report it
                    pass

    def _queue(self) -> queue.SimpleQueue[str]:
        if self._pid != os.getpid():  # the first line of this process (threads do not survive a fork)
            with self._writing:
                if self._pid != os.getpid():
                    self._lines = queue.SimpleQueue()
                    threading.Thread(target=self._write_forever, daemon=True, name="log-writer").start()
                    atexit.register(self.flush_queued)
                    self._pid = os.getpid()
        return self._lines

    def _write_forever(self) -> None:
        while True:
            time.sleep(BACKGROUND_WRITE_SECONDS)
            self.flush_queued()


# How often the background writer writes what was queued (lines are ~0.2 ms apart under load).
BACKGROUND_WRITE_SECONDS = 0.05


def write_in_background() -> None:
    """Web workers: write log lines from a background thread (see _StderrHandler)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _StderrHandler):
            handler.write_in_background()


def configure_logging(level: str = "INFO") -> None:
    """Idempotent: replaces our handler on the root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_telephony", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler._telephony = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Every record used to look up its caller's file and line (a stack walk), its thread's
    # name and its multiprocessing name, which no handler here writes (JsonFormatter writes
    # the message, level, logger, time and the context and extra fields; gunicorn's own
    # lines the time, process id and level). Not collecting them is the logging module's
    # documented optimisation; no line changes.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # urllib3 logs full URLs at DEBUG; keep it quiet (URLs are fine, noise is not).
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # The Twilio SDK logs every API request (URL, params) at INFO.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
