"""Transfer benchmark: `make bench-transfer` (python -m bench.transfer).

Starts the Ultravox and carrier simulators and the service under gunicorn (the real
gunicorn.conf.py) on free loopback ports with a fresh database (PostgreSQL when
reachable, else SQLite; --database to choose). For each of --calls calls, one at a time:
a signed Twilio inbound webhook starts a call whose agent has a transfer target, then the
Ultravox simulator invokes the call's transferCall tool exactly as Ultravox would, and the
carrier simulator records when the service's redirect (the Twilio call update with its
<Dial>) arrives.

Measured: tool call sent (the Ultravox simulator's clock) -> redirect received (the
carrier simulator's clock; same machine, same clock). Target: p99 <= 300 ms. The first
--warmup calls are not counted (connection pools, SDK clients being built).

Prints a table, writes bench/results/transfer-<time>.json, and exits 1 if the target is
missed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from bench.common import (
    ROOT,
    VOICE_PATH,
    free_port,
    new_call_sid,
    postgres_reachable,
    running_stack,
    signed_twilio_webhook,
    start,
    wait_ready,
)

RESULTS = ROOT / "bench" / "results"
TARGET_P99_MS = 300.0
TARGETS = [{"name": "sales", "destination": "+14155550123", "description": "New orders", "mode": "cold",
            "ring_timeout_seconds": 20, "caller_id": None, "accept_digit": "1"}]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _give_the_agent_a_target(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE agent_mappings SET transfer_targets = :targets"),
                     {"targets": json.dumps(TARGETS)})
    engine.dispose()


def one_transfer(http: requests.Session, service_url: str, ultravox_url: str, carrier_url: str) -> float:
    """One call and its transfer; the milliseconds from tool call to carrier redirect."""
    call_sid = new_call_sid()
    body, headers = signed_twilio_webhook(call_sid)
    answer = http.post(service_url + VOICE_PATH, data=body, headers=headers, timeout=10)
    if answer.status_code != 200 or "<Stream" not in answer.text:
        raise RuntimeError(f"inbound webhook answered {answer.status_code}: {answer.text[:200]}")
    # A model asks for a transfer well after the call was answered; the answer's record is
    # written just after it is sent.
    time.sleep(0.05)
    calls = http.get(f"{ultravox_url}/_sim/calls", timeout=10).json()["calls"]
    [uv_call] = [c["call"] for c in calls if c["call"]["metadata"].get("telephony.carrier_call_id") == call_sid]
    invoked = http.post(f"{ultravox_url}/_sim/calls/{uv_call['callId']}/tools/transferCall", timeout=15, json={
        "parameters": {"destination": "sales", "reason": "benchmark"}, "deliver_to": service_url}).json()
    if invoked.get("status") != 200:
        raise RuntimeError(f"tool answered {invoked.get('status')}: {invoked.get('result')}")
    legs = http.get(f"{carrier_url}/_sim/transfers", timeout=10).json()["legs"]
    [leg] = [leg for leg in legs if leg["call_id"] == call_sid]
    return (leg["received"] - invoked["sent"]) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default=None)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    database = args.database or ("postgresql" if postgres_reachable() else "sqlite")

    workdir = Path(RESULTS)
    workdir.mkdir(parents=True, exist_ok=True)
    carrier_port = free_port()
    carriers = start("carrier-sim", [sys.executable, "-m", "telephony.sim", "carriers", "--port", str(carrier_port)],
                     {}, workdir)
    carrier_url = f"http://127.0.0.1:{carrier_port}"
    try:
        wait_ready(carriers, f"{carrier_url}/_sim/requests")
        env = {"TWILIO_API_BASE": carrier_url, "TELNYX_API_BASE": f"{carrier_url}/v2", "PLIVO_API_BASE": carrier_url}
        with running_stack(database, service_env=env, ready_timeout=120) as stack, requests.Session() as http:
            http.trust_env = False
            _give_the_agent_a_target(stack.database_url)
            for _ in range(args.warmup):
                one_transfer(http, stack.service_url, stack.ultravox_url, carrier_url)
            started = time.perf_counter()
            times = sorted(one_transfer(http, stack.service_url, stack.ultravox_url, carrier_url)
                           for _ in range(args.calls))
            wall = time.perf_counter() - started
    finally:
        carriers.stop()
        (workdir / "carrier-sim.log").unlink(missing_ok=True)

    row = {"scenario": "tool call -> carrier redirect (Twilio, cold)", "calls": len(times),
           "p50_ms": round(percentile(times, 0.50), 2), "p90_ms": round(percentile(times, 0.90), 2),
           "p99_ms": round(percentile(times, 0.99), 2), "max_ms": round(times[-1], 2), "wall_s": round(wall, 2)}
    met = row["p99_ms"] <= TARGET_P99_MS
    print(f"database: {database}; {platform.machine()} {platform.system()}, python {platform.python_version()}")
    print(f"{'scenario':<46} {'calls':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(f"{row['scenario']:<46} {row['calls']:>6} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['p99_ms']:>8} "
          f"{row['max_ms']:>8}")
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms: {'met' if met else 'MISSED'}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"transfer-{stamp}.json").write_text(json.dumps(
        {"database": database, "target_p99_ms": TARGET_P99_MS, "met": met, "rows": [row]}, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
