"""Contact import benchmark: a 100,000-row CSV posted to the real service, imported by a real worker.

    python -m bench.contact_import [--rows 100000] [--sqlite] [--keep-logs]     (make bench-contacts)

A fresh database (PostgreSQL when it answers on 127.0.0.1:5432, else SQLite), the demo
agency of bench/common.py with a paused campaign and an API key (campaigns:write), the
service under gunicorn with the real gunicorn.conf.py, and one `flask worker run`
process. The CSV (phone, name, timezone, first_name, plan, account_id; every 1,000th
row with a bad number) is generated into a file and streamed as the raw body of
POST /api/v1/campaigns/{id}/contacts; the import is then polled until `done`.

Measured: wall time from the first byte of the upload to `done` (and the upload's own
share), and the peak resident memory of the web processes (the gunicorn master and its
workers) and of the worker process, each over its own level just before the upload,
sampled every 20 ms from /proc. Targets: done within 60 s, each increase at most
+150 MB. Results are printed and written to bench/results/contact-import-*.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
from cryptography.fernet import Fernet

from bench.campaign import wait_for_log
from bench.common import (
    BIN,
    PG_ADMIN_URL,
    PUBLIC_BASE_URL,
    ROOT,
    Proc,
    free_port,
    fresh_database,
    postgres_reachable,
    seed_demo,
    start,
    wait_ready,
)

RESULTS = ROOT / "bench" / "results"
ROWS = 100_000
FIRST_NUMBER = 12125500000
BAD_EVERY = 1_000
TARGETS = {"wall_s": 60.0, "rss_increase_mb": 150.0}
POLL_S = 0.25
SAMPLE_S = 0.02
RUN_TIMEOUT_S = 600.0


def write_csv(path: Path, rows: int) -> int:
    """The contact list; the number of rows with a bad phone number."""
    bad = 0
    with path.open("w", newline="") as out:
        out.write("phone,name,timezone,first_name,plan,account_id\r\n")
        for n in range(rows):
            number = f"+{FIRST_NUMBER + n}"
            if n % BAD_EVERY == BAD_EVERY - 1:
                number, bad = "not-a-number", bad + 1
            zone = "America/New_York" if n % 2 else ""
            out.write(f'{number},"Contact {n}, Jr.",{zone},First{n},{("gold", "silver")[n % 2]},A-{n:06d}\r\n')
    return bad


def seed_campaign(database_url: str, key: str, workdir: Path) -> tuple[str, str]:
    """A paused campaign of the demo agency and an API key allowed to add contacts."""
    from telephony import create_app
    from telephony.config import Config
    from telephony.services.api_keys import create_api_key
    from telephony.services.campaigns import manage as campaigns

    demo = seed_demo(database_url, key, workdir)
    app = create_app(Config(database_url=database_url, credentials_keys=(key,), public_base_url=PUBLIC_BASE_URL),
                     instance_path=str(workdir / "seed-instance"))
    db = app.extensions["telephony.db"]
    try:
        with app.app_context(), db.session() as session:
            campaign = campaigns.create_campaign(
                session, demo.agency_id, name="bench import", agent_id="3c90c3cc-0d44-4b50-8888-8dd25736052a",
                from_numbers=None, start_at=None, calling_window=None, default_timezone="UTC", calls_per_second=1,
                max_concurrent=1, max_concurrent_agency=None, retry_on=[], max_attempts=1, retry_delay_seconds=0,
                template_context=None, start=False)
            _row, api_key = create_api_key(session, demo.agency_id, name="bench", scopes=["campaigns:write",
                                                                                        "campaigns:read"])
            return str(campaign.id), api_key
    finally:
        db.dispose()


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class PeakMemory(threading.Thread):
    """Samples the resident memory of some processes; the peak of each over its level at start()."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.baseline = {name: rss_kb(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_kb(pid))
            time.sleep(SAMPLE_S)

    def increase_mb(self) -> dict[str, float]:
        return {name: round((self.peak[name] - self.baseline[name]) / 1024, 1) for name in self.pids}


def one_run(database: str, rows: int, keep: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="telephony-bench-import-"))
    procs: list[Proc] = []
    try:
        with fresh_database(database, workdir) as database_url:
            key = Fernet.generate_key().decode()
            campaign_id, api_key = seed_campaign(database_url, key, workdir)
            csv_path = workdir / "contacts.csv"
            bad = write_csv(csv_path, rows)
            size = csv_path.stat().st_size
            port = free_port()
            metrics = workdir / "metrics"
            metrics.mkdir()
            env = {"DATABASE_URL": database_url, "CREDENTIALS_KEYS": key, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
                   "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
            web = start("gunicorn", [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"],
                        {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics), "BIND_HOST": "127.0.0.1",
                         "PORT": str(port)}, workdir)
            procs.append(web)
            worker = start("worker", [str(BIN / "flask"), "--app", "wsgi", "worker", "run"], env, workdir)
            procs.append(worker)
            service = f"http://127.0.0.1:{port}"
            wait_ready(web, f"{service}/healthz", timeout=180)  # start-up is slow on a loaded machine
            wait_for_log(worker, "worker started", timeout=180)  # its start-up (imports) is not the import
            headers = {"X-API-Key": api_key}
            pids = {"web master": web.popen.pid, "worker": worker.popen.pid}
            pids.update({f"web worker {i + 1}": pid for i, pid in enumerate(children(web.popen.pid))})
            memory = PeakMemory(pids)
            memory.start()
            with requests.Session() as http:
                http.trust_env = False
                began = time.monotonic()
                with csv_path.open("rb") as body:
                    posted = http.post(f"{service}/api/v1/campaigns/{campaign_id}/contacts", data=body,
                                       headers={**headers, "Content-Type": "text/csv"}, timeout=120)
                upload_s = time.monotonic() - began
                if posted.status_code != 202:
                    raise RuntimeError(f"upload answered {posted.status_code}: {posted.text[:500]}")
                location = service + posted.headers["Location"]
                state: dict = posted.json()
                last_print = 0.0
                while state["status"] in ("queued", "importing") and time.monotonic() - began < RUN_TIMEOUT_S:
                    time.sleep(POLL_S)
                    state = http.get(location, headers=headers, timeout=30).json()
                    if time.monotonic() - last_print >= 5:
                        last_print = time.monotonic()
                        print(f"  [{time.monotonic() - began:5.1f} s] {state['status']}: rows {state['rows']}, "
                              f"imported {state['imported']}, rejected {state['rejected']}", flush=True)
                wall_s = time.monotonic() - began
                memory.done.set()
                memory.join()
                rejected = http.get(service + state["rejected_rows_url"], headers=headers, timeout=60)
            worker_errors = [line[:300] for line in worker.log_path.read_text(errors="replace").splitlines()
                             if '"level": "error"' in line or "Traceback" in line][:5]
            for proc in reversed(procs):
                proc.stop()
            increase = memory.increase_mb()
            web_peak = max(v for k, v in increase.items() if k.startswith("web"))
            return {
                "database": database, "rows": rows, "bad_rows": bad, "csv_bytes": size,
                "status": state["status"], "imported": state["imported"], "rejected": state["rejected"],
                "rejected_csv_lines": len(rejected.text.splitlines()) - 1,
                "upload_s": round(upload_s, 2), "wall_s": round(wall_s, 2),
                "rss_increase_mb": increase, "web_peak_increase_mb": web_peak,
                "worker_peak_increase_mb": increase["worker"], "worker_log_errors": worker_errors,
            }
    finally:
        for proc in reversed(procs):
            proc.stop()
        if keep:
            print(f"  logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--sqlite", action="store_true", help="use SQLite even when PostgreSQL answers")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    database = "postgresql" if postgres_reachable() and not args.sqlite else "sqlite"
    if database == "sqlite" and not args.sqlite:
        print(f"PostgreSQL does not answer at {PG_ADMIN_URL}; using SQLite", file=sys.stderr)
    print(f"contact import: {args.rows} rows, {database}", flush=True)
    result = one_run(database, args.rows, args.keep_logs)
    expected_imported = args.rows - result["bad_rows"]
    checks = {
        "import done": result["status"] == "done",
        f"every valid row imported ({expected_imported})": result["imported"] == expected_imported,
        f"every bad row rejected and downloadable ({result['bad_rows']})":
            result["rejected"] == result["rejected_csv_lines"] == result["bad_rows"],
        f"done within {TARGETS['wall_s']:.0f} s": result["wall_s"] <= TARGETS["wall_s"],
        f"web processes: peak RSS increase <= {TARGETS['rss_increase_mb']:.0f} MB":
            result["web_peak_increase_mb"] <= TARGETS["rss_increase_mb"],
        f"worker: peak RSS increase <= {TARGETS['rss_increase_mb']:.0f} MB":
            result["worker_peak_increase_mb"] <= TARGETS["rss_increase_mb"],
    }
    print(f"\n{'rows':>8} {'MB':>6} {'upload s':>8} {'to done s':>9} {'web +MB':>8} {'worker +MB':>10} "
          f"{'imported':>8} {'rejected':>8}")
    print(f"{result['rows']:>8} {result['csv_bytes'] / 1e6:>6.1f} {result['upload_s']:>8.2f} "
          f"{result['wall_s']:>9.2f} {result['web_peak_increase_mb']:>8.1f} "
          f"{result['worker_peak_increase_mb']:>10.1f} {result['imported']:>8} {result['rejected']:>8}")
    print(f"  per process: {result['rss_increase_mb']}")
    if result["worker_log_errors"]:
        print("  worker log errors: " + " | ".join(result["worker_log_errors"]))
    print()
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"contact-import-{stamp}.json"
    out.write_text(json.dumps({
        "when": stamp, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                   "platform": platform.platform()},
        "targets": TARGETS, "checks": checks, "result": result}, indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
