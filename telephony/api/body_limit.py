"""A body sent without Content-Length (Transfer-Encoding: chunked) is held to the same
limits as one with it, and refused whole.

Werkzeug enforces MAX_CONTENT_LENGTH on a chunked body by cutting the stream at the
limit without an error, so a view read the first 64 KB of a larger CSV and applied it:
rows were lost without a word. This WSGI middleware reads such a body before the app
sees it, up to the largest limit of any route: longer is 413 at once, and anything
shorter is handed on with its Content-Length set, so each route's own limit (and its
413) applies exactly as for a body that was sent with one.

Routes with a larger limit of their own (contact imports: CONTACT_IMPORT_MAX_BYTES,
25 MB by default) are named by a path pattern, so that every other route keeps the
small one. The body is held in a temporary file past SPOOL_IN_MEMORY_BYTES, so a large
one costs disk, not memory.
"""
from __future__ import annotations

import json
import re
import tempfile
from typing import Any, Callable, Iterable, Sequence

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
READ_CHUNK_BYTES = 64 * 1024
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
TOO_LARGE = json.dumps({"error": "Request body too large", "code": "payload_too_large"}).encode()


class ChunkedBodyLimit:
    def __init__(self, app: WSGIApp, max_bytes: int, *, route_limits: Sequence[tuple[str, int]] = ()) -> None:
        """`route_limits`: (path regular expression, limit) for routes whose limit is
        larger than `max_bytes`; the first whose pattern matches the whole path applies."""
        self.app = app
        self.max_bytes = max_bytes
        self.route_limits = [(re.compile(pattern), limit) for pattern, limit in route_limits]

    def limit_for(self, path: str) -> int:
        return next((limit for pattern, limit in self.route_limits if pattern.fullmatch(path)), self.max_bytes)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("CONTENT_LENGTH") or "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return self.app(environ, start_response)
        max_bytes = self.limit_for(environ.get("PATH_INFO", ""))
        stream = environ["wsgi.input"]
        # Closed (and its file removed) when garbage-collected after the request.
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
        size = 0
        while size <= max_bytes:
            chunk = stream.read(min(READ_CHUNK_BYTES, max_bytes + 1 - size))
            if not chunk:
                break
            body.write(chunk)
            size += len(chunk)
        if size > max_bytes:
            body.close()
            start_response("413 Request Entity Too Large", [("Content-Type", "application/json"),
                                                              ("Content-Length", str(len(TOO_LARGE))),
                                                              ("Connection", "close")])
            return [TOO_LARGE]
        body.seek(0)
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)
