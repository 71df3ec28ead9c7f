"""Shared pieces of the job-queue tests."""
from __future__ import annotations

import threading
from typing import Callable


def claim_from_threads(claim_all: Callable[[], list[int]], threads: int = 4) -> list[int]:
    """Run `claim_all` (claims until it finds nothing more, returns the job ids it got) in
    `threads` threads started together; every job id claimed, in any order. A thread's
    error fails the caller (it would otherwise be lost with the thread)."""
    claimed: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        try:
            claimed.append(claim_all())
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    return [job_id for mine in claimed for job_id in mine]
