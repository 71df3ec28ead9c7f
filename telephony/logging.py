"""Structured JSON logs with the request id and, where known, agency and call ids.

The ids live in context variables set by the request hooks (and by the worker
per job), and a filter copies them onto every record, so any module can just
`log.info(...)` and the line is correlated.
"""
from __future__ import annotations

import json
import logging
import sys
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
    """Writes to whatever sys.stderr is at the time (test capture, gunicorn)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


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
