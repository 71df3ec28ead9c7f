"""Pacing: calls per second per carrier account, shared by every dispatcher.

Step 3 of dialling (see dial): `acquire_cps_slot` takes the next call start of a
carrier account with one upsert on a per-window counter row (`rate_limit_windows`)
that every dispatcher shares, and sleeps until that start. `pacing_plan` spaces the
starts evenly, a little wider apart than 1/limit, so that a call reaching the carrier
a little after its slot still never puts more than `limit` starts into any sliding
second.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from sqlalchemy import delete, func
from sqlalchemy.orm import Session

from ...db import dialect_insert, end_read, transaction
from ...models import RateLimitWindow

log = logging.getLogger(__name__)

# Slots are spaced this much wider than 1/limit: the slack that lets a call reach the
# carrier a little after its slot (thread wake-up, the "dialing" commit, the SDK request)
# without ever putting more than `limit` starts into any sliding second at the carrier.
# 4 %: at 20 calls/s, 19.2 starts/s and up to 41.7 ms of lateness.
CPS_RATE_MARGIN = 0.04
# Of that lateness, the share the carrier request itself may take after the "dialing"
# commit; a dialer that is already later than the rest when it is about to send takes
# a later slot instead (nothing was sent yet, so that is safe).
CPS_SEND_SHARE = 0.6
_MIN_SLOTS_PER_WINDOW = 100


@dataclass(frozen=True)
class Pacing:
    """The calls-per-second plan of one carrier account: `slots` starts per `window`
    seconds, slot i of the window starting at W at W + i * spacing."""

    limit: int
    window: int
    slots: int

    @property
    def spacing(self) -> float:
        return self.window / self.slots

    @property
    def tolerance(self) -> float:
        """How late (s) any start may reach the carrier with no sliding second over the
        limit: any limit + 1 consecutive slots span limit * spacing >= 1 + tolerance."""
        return self.limit * self.spacing - 1

    @property
    def late_limit(self) -> float:
        """How late a dialer may be, just before it sends, and still use its slot."""
        return self.tolerance * (1 - CPS_SEND_SHARE)


def pacing_plan(limit: int, margin: float = CPS_RATE_MARGIN) -> Pacing:
    """Evenly spaced slots, (1 + margin) / limit apart on average. The last slot of a
    window is one spacing before the next window's first, so starts are evenly spaced
    across windows too. The window holds at least ~100 slots so that rounding the slot
    count keeps the rate close to limit / (1 + margin) (1 call/s: 96 starts in 100 s)."""
    limit = max(1, int(limit))
    window = max(1, math.ceil(_MIN_SLOTS_PER_WINDOW / limit))
    return Pacing(limit=limit, window=window, slots=max(1, math.floor(window * limit / (1 + margin))))


def acquire_cps_slot(session: Session, bucket: str, limit: int, *, clock=time.time, sleep=time.sleep,
                     deadline: float | None = None, lead: float = 0.0) -> float | None:
    """Take the next call start of `bucket` (a carrier account), shared by every
    dispatcher through one atomic upsert on a per-window counter, and sleep until
    `lead` seconds before the slot's moment (the caller prepares the start meanwhile and
    waits the rest itself). Returns the slot time, or None when the slot would be after
    `deadline` (or it passed)."""
    pacing = pacing_plan(limit)
    window, slots, spacing = pacing.window, pacing.slots, pacing.spacing
    while True:
        now = clock()
        if deadline is not None and now > deadline:
            return None
        start = math.floor(now / window) * window
        # Slots of this window that are already in the past are skipped, not handed
        # out at once (that would bunch starts up): the count jumps to at least the
        # first slot not before `now`.
        first_count = math.ceil((now - start) / spacing) + 1
        while True:
            count = _count_slot(session, bucket, start, first_count, window)
            if count <= slots:
                break
            # This window is fully booked: book the next one now, not once it has begun
            # (by then its first slot would be in the past and go unused).
            start, first_count = start + window, 1
        slot = start + (count - 1) * spacing
        if deadline is not None and slot > deadline:
            return None
        wait = slot - lead - clock()
        if wait > 0:
            sleep(wait)
        if clock() <= slot + pacing.late_limit:
            return slot
        # Woke up too late (a busy machine): starting now could crowd the next second.
        # Take a later slot.
        log.info("calls-per-second slot of %s missed (woke %.1f ms late); taking a later one", bucket,
                 (clock() - slot) * 1000)


def _count_slot(session: Session, bucket: str, window_start: int, first_count: int, window: int) -> int:
    """Book one slot of the window: its 1-based number (at least `first_count`), committed."""
    table = RateLimitWindow.__table__
    greatest = func.greatest if session.get_bind().dialect.name == "postgresql" else func.max
    statement = (dialect_insert(session)(table).values(bucket=bucket, window_start=window_start, count=first_count)
                 .on_conflict_do_update(index_elements=[table.c.bucket, table.c.window_start],
                                        set_={"count": greatest(table.c.count + 1, first_count)})
                 .returning(table.c.count))
    end_read(session)
    with transaction(session):  # committed at once: every other dispatcher counts this booking
        count = session.execute(statement).scalar_one()
        if count == first_count:  # the window's first booking: drop counters long past
            session.execute(delete(RateLimitWindow).where(RateLimitWindow.bucket == bucket,
                                                          RateLimitWindow.window_start < window_start - 5 * window))
    return count
