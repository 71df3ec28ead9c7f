"""CPU time and memory of running processes, from their own kernel counters (/proc, Linux).

The benchmark reads these before and after a load phase: CPU seconds (user + system, every
thread) of a gunicorn master and its workers, or of the PostgreSQL backends serving one
database, divided by the requests of the phase. Counters tick at CLK_TCK (100 Hz): over
thousands of requests that is well below a percent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

TICK = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_seconds: float  # user + system
    system_seconds: float  # of which in the kernel (system calls, page faults)


def stat(pid: int) -> ProcStat | None:
    """None once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    # fields[0] is the state (3rd field of the line): ppid is the 4th, utime the 14th, stime the 15th.
    return ProcStat(pid=pid, ppid=int(fields[1]), cpu_seconds=(int(fields[11]) + int(fields[12])) * TICK,
                    system_seconds=int(fields[12]) * TICK)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = stat(int(entry.name))
            if info is not None and info.ppid == pid:
                found.append(info.pid)
    return found


def tree_cpu(pids: list[int], *, system_only: bool = False) -> dict[int, float]:
    """pid -> CPU seconds so far (or only those spent in the kernel), for the processes still alive."""
    cpu = {}
    for pid in pids:
        info = stat(pid)
        if info is not None:
            cpu[pid] = info.system_seconds if system_only else info.cpu_seconds
    return cpu


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings; a process that appeared meanwhile counts whole
    (one that ended meanwhile is lost: the benchmark keeps its processes alive)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS), shared pages included, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages divided among the processes sharing them, MB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


class GunicornProcesses:
    """A gunicorn master and its workers."""

    def __init__(self, master_pid: int) -> None:
        self.master_pid = master_pid

    def pids(self) -> list[int]:
        return [self.master_pid, *children(self.master_pid)]

    def workers(self) -> list[int]:
        return children(self.master_pid)

    def cpu(self, *, system_only: bool = False) -> dict[int, float]:
        return tree_cpu(self.pids(), system_only=system_only)


class PostgresBackends:
    """The PostgreSQL server processes serving one database (same machine only)."""

    def __init__(self, database_url: str) -> None:
        self.database = database_url.rsplit("/", 1)[1].split("?")[0]
        self.engine = create_engine(database_url.rsplit("/", 1)[0] + "/postgres", pool_size=1)

    def pids(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                                     {"name": self.database}).scalars())

    def cpu(self) -> dict[int, float]:
        return tree_cpu(self.pids())

    def close(self) -> None:
        self.engine.dispose()
