"""Where an inbound webhook's CPU goes in a running gunicorn worker: `python -m bench.profile_inbound`.

A diagnostic, not a benchmark with targets. Starts the same stack as `make bench-inbound`
(Ultravox simulator answering at once, a fresh database, the service under the real
gunicorn.conf.py) with one worker process, keeps 20 signed Twilio webhooks in flight, and
samples the worker with py-spy (`requirements-dev.txt`) for --seconds: with --gil only
the thread holding the GIL is sampled, i.e. where CPU goes. Prints the share of samples
per library / step (inclusive: a frame counts once per sample if it is on the stack) and
writes the raw collapsed stacks next to the results (bench/results/profile-<time>.txt).
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

from bench import proc_stats
from bench.common import BIN, ROOT, postgres_reachable, running_stack
from bench.inbound import CONCURRENCY, closed_loop, set_latency, valid_stream_twiml, webhook_jobs

# (label, substring of a collapsed-stack frame "function (file:line)"): inclusive shares.
GROUPS = (
    ("Flask + Werkzeug request handling (all under it)", "wsgi_app (flask/app.py"),
    ("gunicorn gthread worker (outside the app)", "gunicorn/"),
    ("SQLAlchemy (all of it)", "sqlalchemy/"),
    ("psycopg2 / database driver calls", "do_execute ("),
    ("commit", "commit ("),
    ("requests + urllib3 + http.client", "requests/"),
    ("json (dumps / loads)", "json/"),
    ("logging", "logging/"),
    ("telephony.logging JSON formatter", "format (telephony/logging.py"),
    ("Prometheus", "prometheus_client/"),
    ("credential decryption (Fernet)", "fernet.py"),
    ("Twilio signature check", "request_validator.py"),
    ("TwiML", "twiml/"),
    ("uuid", "uuid.py"),
    ("telephony: inbound answer (all under it)", "answer_inbound (telephony/services/inbound.py"),
    ("  route lookup", "find_route (telephony/services/inbound_routes.py"),
    ("  credentials + signature", "(telephony/services/carrier_webhooks.py"),
    ("  claim (INSERT ... ON CONFLICT + COMMIT)", "_claim (telephony/services/calls.py"),
    ("  Ultravox client", "create_agent_call (telephony/ultravox.py"),
    ("telephony: after-answer record write", "_store_after_answer"),
    ("telephony: access log + metrics hook", "finish_request (telephony/api/hooks.py"),
    ("garbage collection", "gc_collect"),
)


def share_table(collapsed: str) -> list[tuple[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for label, needle in GROUPS:
            if needle in stack:
                counts[label] += n
    return [(label, 100 * counts[label] / total if total else 0.0) for label, _ in GROUPS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default=None)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--wall", action="store_true", help="sample every thread, not only the GIL holder")
    args = parser.parse_args(argv)
    database = args.database or ("postgresql" if postgres_reachable() else "sqlite")
    out = ROOT / "bench" / "results" / f"profile-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with running_stack(database, service_env={"WEB_CONCURRENCY": "1"}) as stack:
        port = int(stack.service_url.rsplit(":", 1)[1])
        [worker] = proc_stats.children(stack.web_pid or 0)
        set_latency(stack, 0)
        closed_loop("127.0.0.1", port, webhook_jobs(300), CONCURRENCY, valid_stream_twiml)  # warm-up
        stop = threading.Event()
        sent = [0]

        def load() -> None:
            while not stop.is_set():
                results, _ = closed_loop("127.0.0.1", port, webhook_jobs(200), CONCURRENCY, valid_stream_twiml)
                sent[0] += len(results)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(1)
        spy = [str(BIN / "py-spy"), "record", "--pid", str(worker), "--duration", str(args.seconds), "--rate", "250",
               "--format", "raw", "--output", str(out), "--nonblocking"]
        if not args.wall:
            spy.append("--gil")
        subprocess.run(spy, check=True, capture_output=True)
        stop.set()
        loader.join(timeout=120)
    print(f"{database}, one gunicorn worker, {CONCURRENCY} webhooks in flight, {sent[0]} webhooks; "
          f"{'every busy thread' if args.wall else 'GIL holder'} sampled for {args.seconds} s; raw stacks: "
          f"{out.relative_to(ROOT)}")
    for label, share in share_table(out.read_text()):
        print(f"  {label:<52} {share:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
