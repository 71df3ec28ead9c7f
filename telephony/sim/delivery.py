"""What the simulators' add-on parts share: sending a callback to the service under test
at another address than the one it was given, and forgetting their state on reset."""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, request


def delivered_to(url: str, deliver_to: str | None) -> str:
    """`url` with the scheme and host of `deliver_to` (the service as this machine reaches
    it), path and query kept: the signature a carrier computes still covers the public URL,
    as behind a proxy. No `deliver_to`: the URL as given."""
    if not deliver_to:
        return url
    target, original = urlsplit(deliver_to), urlsplit(url)
    return urlunsplit((target.scheme, target.netloc, original.path, original.query, ""))


def also_on_reset(app: Flask, reset: Callable[[], None]) -> None:
    """``POST /_sim/reset`` also forgets what a part holds."""

    @app.before_request
    def _reset_too() -> None:
        if request.method == "POST" and request.path == "/_sim/reset":
            reset()
