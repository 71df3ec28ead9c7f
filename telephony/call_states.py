"""The status vocabulary of a call and the one rule for moving between states.

Carrier status callbacks and Ultravox webhooks both move a call's status, and
both arrive duplicated and out of order. A status only ever moves forward
(created → ringing → in-progress → a terminal state), and a terminal state is
final, so a late "ringing" can never undo an "in-progress" or a "completed".
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

TERMINAL = frozenset({COMPLETED, BUSY, NO_ANSWER, FAILED, CANCELED})
ALL = frozenset({CREATED, QUEUED, RINGING, IN_PROGRESS}) | TERMINAL
_RANK = {CREATED: 0, QUEUED: 1, RINGING: 2, IN_PROGRESS: 3}


def rank(status: str) -> int:
    return 4 if status in TERMINAL else _RANK.get(status, 0)


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def should_advance(current: str, new: str) -> bool:
    """True when `new` moves the call forward from `current`."""
    if new not in ALL or current in TERMINAL:
        return False
    return rank(new) > rank(current)
