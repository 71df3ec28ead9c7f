"""Run the local simulators: ``python -m telephony.sim {ultravox|carriers|all}``.

Examples::

    python -m telephony.sim ultravox --port 9100 --latency-ms 500 \
        --webhook-url http://127.0.0.1:8000/webhooks/ultravox --webhook-secret-env SIM_WEBHOOK_SECRET
    python -m telephony.sim carriers --port 9200
    python -m telephony.sim all            # both: 9100 (Ultravox) and 9200 (carriers)

Secrets (API keys, the webhook secret) are read from the environment variables named
by the ``--*-env`` options, never from argv, which other local users can read in ps.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import ExitStack
from types import FrameType

from telephony.sim import carriers, ultravox
from telephony.sim.common import DEFAULT_THREADS, serve_in_thread

DEFAULT_HOST = "127.0.0.1"
DEFAULT_ULTRAVOX_PORT = 9100
DEFAULT_CARRIERS_PORT = 9200


def _env_secret(variable: str | None, what: str) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        # Name the variable, never a value.
        raise SystemExit(f"error: environment variable {variable} (for {what}) is not set or empty")
    return value


def _add_ultravox_options(parser: argparse.ArgumentParser, *, port_flag: str) -> None:
    parser.add_argument(port_flag, type=int, default=DEFAULT_ULTRAVOX_PORT, dest="ultravox_port")
    parser.add_argument("--webhook-url", default=None, help="where to POST call.* webhooks")
    parser.add_argument("--webhook-secret-env", metavar="VAR", help="env var holding the webhook secret")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="env var holding accepted API key(s), comma-separated; "
        "without it any key is accepted"
    )
    parser.add_argument("--recording-mode", choices=ultravox.RECORDING_MODES, default="redirect")
    parser.add_argument("--max-concurrent-calls", type=int, metavar="N",
                        default=int(os.environ.get("SIM_ULTRAVOX_MAX_CONCURRENT_CALLS") or 0) or None,
                        help="the account's concurrency limit: 429 while N calls have not ended "
                             "(default: none, or SIM_ULTRAVOX_MAX_CONCURRENT_CALLS)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m telephony.sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default=DEFAULT_HOST, help="bind address (default 127.0.0.1)")
    common.add_argument("--latency-ms", type=int, default=0, help="delay added to every API request")
    common.add_argument("--access-log", action="store_true", help="log every request to stderr")
    common.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"requests served at once (default {DEFAULT_THREADS}); more wait their turn")

    uv = sub.add_parser("ultravox", parents=[common], help="Ultravox REST API simulator")
    _add_ultravox_options(uv, port_flag="--port")

    ca = sub.add_parser("carriers", parents=[common], help="Twilio/Telnyx/Plivo simulator")
    ca.add_argument("--port", type=int, default=DEFAULT_CARRIERS_PORT, dest="carriers_port")

    both = sub.add_parser("all", parents=[common], help="both simulators, each on its own port")
    _add_ultravox_options(both, port_flag="--ultravox-port")
    both.add_argument("--carriers-port", type=int, default=DEFAULT_CARRIERS_PORT)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    apps = []
    if args.which in ("ultravox", "all"):
        keys = _env_secret(args.api_key_env, "--api-key-env")
        app = ultravox.create_app(
            api_keys={k.strip() for k in keys.split(",") if k.strip()} if keys else None,
            webhook_url=args.webhook_url,
            webhook_secret=_env_secret(args.webhook_secret_env, "--webhook-secret-env"),
            latency_ms=args.latency_ms,
            recording_mode=args.recording_mode,
            max_concurrent_calls=args.max_concurrent_calls,
        )
        apps.append(("ultravox", app, args.ultravox_port))
    if args.which in ("carriers", "all"):
        apps.append(("carriers", carriers.create_app(latency_ms=args.latency_ms), args.carriers_port))

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Ctrl-C and SIGTERM both end the wait below; the servers then shut down cleanly.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    with ExitStack() as stack:
        for name, app, port in apps:
            handle = stack.enter_context(serve_in_thread(app, args.host, port, access_log=args.access_log,
                                                         threads=args.threads))
            print(f"{name} simulator listening on {handle.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    print("simulators stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
