"""Where an inbound webhook's time goes: `python -m bench.inbound_phases [--database ...]`.

A diagnostic, not a benchmark with targets: the Twilio voice webhook runs in this process
(`app.wsgi_app` on a prepared WSGI environ, so no HTTP server or load generator is
measured), one at a time, against the Ultravox simulator in its own process answering at
once, on a fresh database. Each step of the use case is timed by wrapping its function, so
the numbers carry a few microseconds of wrapping each; compare them with each other, not
with the benchmark's rows. Prints the median of each step over the measured webhooks.
"""
from __future__ import annotations

import argparse
import functools
import io
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import requests
from cryptography.fernet import Fernet

from bench.common import (
    PUBLIC_BASE_URL,
    VOICE_PATH,
    free_port,
    fresh_database,
    new_call_sid,
    postgres_reachable,
    seed_demo,
    signed_twilio_webhook,
    start,
    wait_ready,
)

# (module, attribute): the steps of services/inbound.py's answer (calls.start_call inside it),
# in the order they run.
STEPS = (
    ("telephony.api.webhooks", "webhook_request"),
    ("telephony.services.inbound", "find_route"),
    ("telephony.services.carrier_webhooks", "verified_credentials"),
    ("telephony.services.carrier_webhooks", "credentials_if_signed"),  # a kept route (inbound_routes.py)
    ("telephony.services.calls", "ultravox_client_for"),
    ("telephony.services.calls", "_claim"),
    ("telephony.ultravox", "UltravoxClient.create_agent_call"),
    ("telephony.carriers.base", "XmlCarrierAdapter.render"),
    ("telephony.services.inbound", "store_pending_write"),
)


def timed_steps() -> dict[str, list[float]]:
    """Wrap every step so that each call adds its duration (ms) to the returned lists."""
    durations: dict[str, list[float]] = defaultdict(list)
    for module_name, attribute in STEPS:
        owner: Any = sys.modules.get(module_name) or __import__(module_name, fromlist=["_"])
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, _timing(getattr(owner, name), durations[attribute]))
    return durations


def _timing(function: Callable, into: list[float]) -> Callable:
    @functools.wraps(function)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into.append((time.perf_counter() - started) * 1000)
    return timed


def webhook_environ(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": VOICE_PATH, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": headers["Content-Type"],
            "HTTP_X_TWILIO_SIGNATURE": headers["X-Twilio-Signature"], "REMOTE_ADDR": "127.0.0.1"}


@dataclass(frozen=True)
class InProcessStack:
    database_url: str
    credentials_key: str
    ultravox_url: str
    workdir: Path


@contextmanager
def seeded_stack(database: str, prefix: str) -> Iterator[InProcessStack]:
    """A fresh database seeded with the demo agency, and the Ultravox simulator in a process
    of its own (answering at once), for an app run in this process."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    with fresh_database(database, workdir) as database_url:
        key = Fernet.generate_key().decode()
        seed_demo(database_url, key, workdir)
        port = free_port()
        simulator = start("ultravox-sim", [sys.executable, "-m", "telephony.sim", "ultravox", "--port", str(port)],
                          {}, workdir)
        try:
            ultravox_url = f"http://127.0.0.1:{port}"
            wait_ready(simulator, f"{ultravox_url}/_sim/requests")
            yield InProcessStack(database_url, key, ultravox_url, workdir)
        finally:
            simulator.stop()


def run(database: str, warm_up: int, measured: int) -> None:
    from telephony import create_app
    from telephony.config import Config

    with seeded_stack(database, "telephony-phases-") as stack:
        database_url, key, ultravox_url, workdir = (stack.database_url, stack.credentials_key, stack.ultravox_url,
                                                    stack.workdir)
        app = None
        try:
            app = create_app(Config(database_url=database_url, credentials_keys=(key,),
                                    public_base_url=PUBLIC_BASE_URL, ultravox_api_base=ultravox_url),
                             instance_path=str(workdir / "instance"))
            logging.getLogger().setLevel(logging.WARNING)  # one info line per webhook is not what we measure
            durations = timed_steps()
            answers, closes = [], []
            for n in range(warm_up + measured):
                body, headers = signed_twilio_webhook(new_call_sid())
                statuses: list[str] = []
                started = time.perf_counter()
                response = app.wsgi_app(webhook_environ(body, headers), lambda status, *_: statuses.append(status))
                b"".join(response)
                answered = time.perf_counter()
                response.close()  # what the server does once the answer is sent
                if not statuses[0].startswith("200"):
                    raise RuntimeError(f"webhook answered {statuses[0]}")
                if n == warm_up - 1:
                    for values in durations.values():
                        values.clear()
                if n >= warm_up:
                    answers.append((answered - started) * 1000)
                    closes.append((time.perf_counter() - answered) * 1000)
            simulator_ms = statistics.median(entry["duration_ms"] for entry in requests.get(
                f"{ultravox_url}/_sim/requests", timeout=10).json()["requests"][-measured:])
        finally:
            if app is not None:
                app.extensions["telephony.db"].dispose()

    print(f"{database}, {measured} webhooks one at a time, in-process; medians in ms")
    print(f"  {'answer (wsgi_app until the body is read)':<48} {statistics.median(answers):7.3f}")
    for _module, attribute in STEPS:
        if not durations[attribute]:  # a step this path skips (the route read, once the route is kept)
            print(f"  {attribute:<48} {'not run':>7}")
            continue
        print(f"  {attribute:<48} {statistics.median(durations[attribute]):7.3f}")
        if attribute.endswith("create_agent_call"):
            print(f"  {'  of which the simulator (its WSGI time)':<48} {simulator_ms:7.3f}")
    print(f"  {'after the answer (response.close)':<48} {statistics.median(closes):7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    database = args.database
    if database == "auto":
        database = "postgresql" if postgres_reachable() else "sqlite"
    run(database, warm_up=50, measured=args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
