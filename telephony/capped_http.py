"""HTTP requests whose total time is capped, not only each socket operation's.

`requests`' timeout is per socket operation: (connect, read) bounds one connect
and each single read. A server that trickles its status line and headers one
byte at a time, just inside the read timeout, keeps such a request going for
as long as it likes. `capped_post` also starts a timer for the whole request;
when it runs out, the request's sockets are shut down, which ends any read or
write in progress at once, and the request raises `TotalTimeout` (a
`requests.Timeout`).

What it covers: from the start of the request until its response headers are
in. A single connect attempt is bounded by the connect timeout alone (a socket
still connecting is not reachable yet; it is shut down as soon as it is). With
`stream=True` the body is not covered: read it yourself or, better, not at all.
"""
from __future__ import annotations

import socket
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection


class TotalTimeout(requests.Timeout):
    """The request took longer than its total cap."""


class _Watch:
    """The sockets of one capped request, shut down when its time is up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._finished = False
        self.expired = False

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def finish(self) -> bool:
        """The request is over: nothing is shut down from now on. True if its time ran out."""
        with self._lock:
            self._finished = True
            return self.expired


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for a TLS socket: it wakes a read or write
    # blocked in another thread without touching the TLS state that thread uses.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed, or a plain socket detached by its TLS wrapper


_current = threading.local()


def watch_socket(sock: socket.socket | None) -> None:
    """Put a socket of the current capped request under its timer (connection classes of
    other adapters call this, e.g. services/events.py's address-pinning one)."""
    watch: _Watch | None = getattr(_current, "watch", None)
    if watch is not None:
        watch.add(sock)


class WatchedHTTPSConnection(HTTPSConnection):
    """Puts the TLS socket under the timer too (it replaces the plain one the adapter's
    `_new_conn` watched)."""

    def connect(self) -> None:
        super().connect()
        watch_socket(self.sock)  # the TLS socket that replaced the plain one


def capped_post(url: str, *, total: float, adapter: HTTPAdapter, **kwargs: Any) -> requests.Response:
    """requests.post(url, **kwargs) through `adapter`, given at most `total` seconds
    until the response headers are in (see the module docstring); TotalTimeout after
    that. The adapter's connections put their sockets under the timer with
    `watch_socket` (WatchedHTTPSConnection does so for the TLS socket)."""
    watch = _Watch()
    timer = threading.Timer(total, watch.expire)
    timer.daemon = True
    previous = getattr(_current, "watch", None)
    _current.watch = watch
    timer.start()
    try:
        with requests.Session() as session:
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            try:
                response = session.post(url, **kwargs)
            except requests.RequestException as exc:
                if watch.finish():
                    raise TotalTimeout(f"no answer within {total:g}s") from exc
                raise
    finally:
        timer.cancel()
        _current.watch = previous
    if watch.finish():
        # Cut off mid-headers, http.client takes the end of the stream for the end of
        # the headers: what came is no answer.
        response.close()
        raise TotalTimeout(f"no answer within {total:g}s")
    return response
