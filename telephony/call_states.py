"""The status vocabulary of a call and the one rule for moving between states.

Carrier status callbacks and Ultravox webhooks both move a call's status, and
both arrive duplicated and out of order. A status only ever moves forward
(created → ringing → in-progress → a terminal state), and a terminal state is
final, so a late "ringing" can never undo an "in-progress" or a "completed".

"unknown" is ours, never a carrier's word: the carrier was asked to dial and did not
answer clearly (a 5xx or a timeout), so the call may exist. It ranks with "created":
the carrier's later callbacks (signed, addressed by our call id) move it on.
"""
from __future__ import annotations

CREATED = "created"
QUEUED = "queued"
RINGING = "ringing"
IN_PROGRESS = "in-progress"
COMPLETED = "completed"
BUSY = "busy"
NO_ANSWER = "no-answer"
FAILED = "failed"
CANCELED = "canceled"
UNKNOWN = "unknown"

TERMINAL = frozenset({COMPLETED, BUSY, NO_ANSWER, FAILED, CANCELED})
ALL = frozenset({CREATED, UNKNOWN, QUEUED, RINGING, IN_PROGRESS}) | TERMINAL
# What carriers report (UNKNOWN and CREATED are only ever set by us).
CARRIER_REPORTED = ALL - {CREATED, UNKNOWN}
_RANK = {CREATED: 0, UNKNOWN: 0, QUEUED: 1, RINGING: 2, IN_PROGRESS: 3}


def rank(status: str) -> int:
    return 4 if status in TERMINAL else _RANK.get(status, 0)


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def should_advance(current: str, new: str) -> bool:
    """True when `new` moves the call forward from `current`."""
    if new not in ALL or current in TERMINAL:
        return False
    return rank(new) > rank(current)
