"""CPU per inbound webhook in one thread, the service against the reference app: `python -m bench.inbound_cpu`.

A diagnostic beside `make bench-inbound`, steadier than it on a shared machine: no HTTP
server, no threads, no load generator. Both apps (the service's `create_app`, and
bench/reference_app.py) answer signed Twilio voice webhooks in this process through their
WSGI callables, one at a time, against the Ultravox simulator in its own process answering
at once, on a fresh database (PostgreSQL when reachable). Rounds of --requests webhooks
alternate which app goes first; each round's CPU is this process's own
(`time.process_time()`), per webhook, and the medians are compared. The service's write
after the answer is written inline here (WRITE_BEHIND_MS=0) so that its cost is counted in
the round that caused it; its log lines go to stderr as in a web worker (redirect stderr
to keep the terminal quiet).

Run with another checkout's `telephony` first on PYTHONPATH to compare two versions of
the service against the same reference (before / after a change).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

from bench.common import (
    PUBLIC_BASE_URL,
    TWILIO_TOKEN,
    ULTRAVOX_AGENT_ID,
    ULTRAVOX_KEY,
    new_call_sid,
    postgres_reachable,
    signed_twilio_webhook,
)
from bench.inbound_phases import seeded_stack, webhook_environ

WSGIApp = Callable[..., Any]


def answer_one(app: WSGIApp) -> None:
    body, headers = signed_twilio_webhook(new_call_sid())
    statuses: list[str] = []
    response = app(webhook_environ(body, headers), lambda status, *_: statuses.append(status))
    b"".join(response)
    response.close()  # what the server does once the answer is sent (the service's record write)
    if not statuses[0].startswith("200"):
        raise RuntimeError(f"webhook answered {statuses[0]}")


def run(database: str, rounds: int, requests_per_round: int) -> tuple[list[float], list[float]]:
    from telephony import create_app
    from telephony.config import Config

    with seeded_stack(database, "telephony-cpu-") as stack:
        os.environ.update({"REFERENCE_TWILIO_TOKEN": TWILIO_TOKEN, "REFERENCE_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
                           "REFERENCE_ULTRAVOX_BASE": stack.ultravox_url, "REFERENCE_ULTRAVOX_KEY": ULTRAVOX_KEY,
                           "REFERENCE_ULTRAVOX_AGENT_ID": ULTRAVOX_AGENT_ID})
        from bench import reference_app  # reads the settings above when imported

        settings: dict[str, Any] = {"database_url": stack.database_url, "credentials_keys": (stack.credentials_key,),
                                    "public_base_url": PUBLIC_BASE_URL, "ultravox_api_base": stack.ultravox_url}
        if "write_behind_ms" in Config.__dataclass_fields__:  # (older versions wrote inline anyway)
            settings["write_behind_ms"] = 0
        service = create_app(Config(**settings), instance_path=str(stack.workdir / "instance"))
        apps: dict[str, WSGIApp] = {"service": service, "reference": reference_app.app}
        try:
            for app in apps.values():  # warm-up: connections, caches
                for _ in range(100):
                    answer_one(app)
            per_webhook: dict[str, list[float]] = {name: [] for name in apps}
            for round_ in range(rounds):
                for name in (list(apps) if round_ % 2 == 0 else list(reversed(apps))):
                    started = time.process_time()
                    for _ in range(requests_per_round):
                        answer_one(apps[name])
                    per_webhook[name].append((time.process_time() - started) * 1000 / requests_per_round)
        finally:
            service.extensions["telephony.db"].dispose()
    return per_webhook["service"], per_webhook["reference"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300, help="webhooks per round and app")
    args = parser.parse_args(argv)
    database = args.database
    if database == "auto":
        database = "postgresql" if postgres_reachable() else "sqlite"
    service, reference = run(database, args.rounds, args.requests)
    ours, theirs = statistics.median(service), statistics.median(reference)
    print(f"{database}, {args.rounds} alternating rounds of {args.requests} webhooks each, one thread, in-process")
    print(f"  CPU per webhook: service {ours:.3f} ms, reference {theirs:.3f} ms, ratio {ours / theirs:.2f}")
    print(f"  rounds (ms): service {[round(v, 3) for v in service]}, reference {[round(v, 3) for v in reference]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
