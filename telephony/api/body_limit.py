"""A body sent without Content-Length (Transfer-Encoding: chunked) is held to the same
limits as one with it, and refused whole.

Werkzeug enforces MAX_CONTENT_LENGTH on a chunked body by cutting the stream at the
limit without an error, so a view read the first 64 KB of a larger CSV and applied it:
rows were lost without a word. This WSGI middleware reads such a body before the app
sees it, up to the largest limit of any route: longer is 413 at once, and anything
shorter is handed on with its Content-Length set, so each route's own limit (and its
413) applies exactly as for a body that was sent with one.
"""
from __future__ import annotations

import io
import json
from typing import Any, Callable, Iterable

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
READ_CHUNK_BYTES = 64 * 1024
TOO_LARGE = json.dumps({"error": "Request body too large", "code": "payload_too_large"}).encode()


class ChunkedBodyLimit:
    def __init__(self, app: WSGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("CONTENT_LENGTH") or "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return self.app(environ, start_response)
        stream = environ["wsgi.input"]
        body = bytearray()
        while len(body) <= self.max_bytes:
            chunk = stream.read(min(READ_CHUNK_BYTES, self.max_bytes + 1 - len(body)))
            if not chunk:
                break
            body += chunk
        if len(body) > self.max_bytes:
            start_response("413 Request Entity Too Large", [("Content-Type", "application/json"),
                                                              ("Content-Length", str(len(TOO_LARGE))),
                                                              ("Connection", "close")])
            return [TOO_LARGE]
        environ["wsgi.input"] = io.BytesIO(bytes(body))
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)
