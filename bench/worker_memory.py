"""Web-worker memory under load: `python -m bench.worker_memory`.

Starts the service under gunicorn with the real gunicorn.conf.py (bench/common.py's
`running_stack`: Ultravox simulator, a fresh database, PostgreSQL when reachable), prints
each process's resident (VmRSS) and proportional (PSS) memory once it answers, sends
signed Twilio voice webhooks (default 3,000, 20 in flight, Ultravox answering at once),
then bursts of 400 simultaneous webhooks with Ultravox answering after 500 ms (every
thread of both workers busy, their database pools at full size: bench/inbound.py's side by
side does the same), checks every answer streams to Ultravox, and prints the same figures
again, with each worker's anonymous and file-backed resident memory (/proc/<pid>/status
RssAnon / RssFile).

Short on purpose (well under a minute of load): one figure to compare before and after a
change. MB are 10^6 bytes, as in bench/inbound.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench import proc_stats
from bench.common import postgres_reachable, running_stack
from bench.inbound import LATENCY_MS, burst, closed_loop, set_latency, valid_stream_twiml, webhook_jobs


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def smaps_by_kind(pid: int) -> dict[str, float]:
    """Resident MB per kind of mapping: each shared library or file by name, [heap], thread
    stacks (anonymous mappings of 8 MB), malloc arenas (anonymous mappings starting at a 64 MB
    boundary), other anonymous memory."""
    kinds: dict[str, float] = {}
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            start, end = (int(part, 16) for part in fields[0].split("-"))
            size = end - start
            if len(fields) >= 6:
                kind = fields[5] if fields[5].startswith("[") else Path(fields[5]).name
            elif abs(size - 8 * 2**20) <= 8192:
                kind = "anon: thread stacks (8 MB)"
            elif start % (64 * 2**20) == 0:  # glibc aligns each arena's heap to its 64 MB
                kind = "anon: malloc arenas"
            else:
                kind = "anon: other"
        elif fields[0] == "Rss:":
            kinds[kind] = kinds.get(kind, 0.0) + int(fields[1]) * 1024 / 1e6
    return kinds


def report(label: str, web: proc_stats.GunicornProcesses) -> list[float]:
    print(f"{label}:")
    master = web.master_pid
    print(f"  master     VmRSS {proc_stats.rss_mb(master):6.1f} MB  PSS {proc_stats.pss_mb(master):6.1f} MB")
    rss = []
    for pid in sorted(web.workers()):
        rss.append(proc_stats.rss_mb(pid))
        print(f"  worker {pid:>7}  VmRSS {rss[-1]:6.1f} MB  PSS {proc_stats.pss_mb(pid):6.1f} MB  "
              f"(anon {status_mb(pid, 'RssAnon'):5.1f}, file {status_mb(pid, 'RssFile'):5.1f})")
    return rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--bursts", type=int, default=2, help="rounds of 400 simultaneous webhooks")
    parser.add_argument("--smaps", action="store_true", help="also where each worker's memory grew, by mapping")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the service (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"],
                        default="postgresql" if postgres_reachable() else "sqlite")
    args = parser.parse_args(argv)
    service_env = dict(setting.split("=", 1) for setting in args.env)
    with running_stack(args.database, service_env=service_env) as stack:
        web = proc_stats.GunicornProcesses(stack.web_pid or 0)
        expected = int(service_env.get("WEB_CONCURRENCY", os.environ.get("WEB_CONCURRENCY", "2")))
        deadline = time.monotonic() + 30
        while len(web.workers()) < expected and time.monotonic() < deadline:  # the last may still be forking
            time.sleep(0.1)
        time.sleep(1)  # and booting
        report("after start", web)
        before = {pid: smaps_by_kind(pid) for pid in web.workers()}
        set_latency(stack, 0)
        host, port = "127.0.0.1", int(stack.service_url.rsplit(":", 1)[1])
        results, wall = closed_loop(host, port, webhook_jobs(args.webhooks), args.concurrency, valid_stream_twiml)
        sent = len(results)
        print(f"{sent} webhooks, {args.concurrency} in flight, {wall:.1f} s")
        set_latency(stack, LATENCY_MS)
        for _ in range(args.bursts):
            burst_results, wall = burst(host, port, webhook_jobs(400), valid_stream_twiml)
            print(f"burst of {len(burst_results)}, Ultravox {LATENCY_MS} ms: {wall:.1f} s")
            results += burst_results
        errors = [result.error for result in results if not result.ok]
        print(f"{len(errors)} errors" + (f" (first: {errors[0]})" if errors else ""))
        rss = report(f"after {len(results)} webhooks", web)
        if args.smaps:
            for pid, kinds in before.items():
                after = smaps_by_kind(pid)
                growth = sorted(((after.get(k, 0.0) - kinds.get(k, 0.0), k) for k in set(after) | set(kinds)),
                                reverse=True)
                print(f"  worker {pid}: grew by " + ", ".join(f"{name} {mb:+.1f}" for mb, name in growth[:12]
                                                               if abs(mb) >= 0.2))
    print(f"largest worker VmRSS: {max(rss):.1f} MB")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
