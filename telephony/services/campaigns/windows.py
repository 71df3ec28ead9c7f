"""Calling windows: when a campaign may dial, judged by each callee's local clock.

A `CallingWindow` is a set of ISO weekdays plus a local start and end time. It
describes one *occurrence* per enabled local date D:

* start < end: the occurrence runs from D start to D end (same day).
* start > end: it crosses midnight and runs from D start to (D + 1) end. The part
  after midnight belongs to the occurrence that started the previous evening, so
  "fri 20:00-02:00" is open at 01:00 on Saturday even if Saturday is not enabled,
  and "sat 20:00-02:00" is *not* open at 01:00 on Saturday.
* start == end is rejected. Read as "24 hours" it would call through the night, and
  an accidental equal pair is far likelier than an intended one; a campaign that may
  call at any time simply has no window. An end of "00:00" (or "24:00") means
  "until midnight".

Start is inclusive, end exclusive. Wall times become instants like this (the DST
policy, chosen so that an occurrence is one contiguous interval and is never
counted twice):

* A wall time that happens twice (autumn fall-back) means its first occurrence.
  "01:30-05:00" on the fall-back night opens at the first 01:30 and stays open
  through the repeated hour; "22:00-01:30" closes at the first 01:30 and does not
  reopen when the clock shows 01:00-01:30 again.
* A wall time that does not exist (spring-forward gap) means the first instant
  after the gap: a 02:30 start in New York on 2026-03-08 opens at 03:00 EDT, and
  a 02:30 end closes at 03:00 EDT. An occurrence lying entirely inside the gap
  (e.g. 02:00-02:45 that day) is empty: it never opens.

Every function takes the zone as an IANA name and instants as aware datetimes, and
returns aware UTC datetimes. Only the standard library's `zoneinfo` is used.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
from phonenumbers import timezone as phonenumber_zones

from ...errors import InvalidInput
from ..phone_numbers import normalize_e164

UTC = timezone.utc

DAY_NAMES: dict[str, int] = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_FULL_DAY_NAMES = {"monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6,
                   "sunday": 7}
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")

# How many local dates ahead next_open looks. One week covers every weekday set;
# the extra day covers an occurrence that is empty because it fell in a DST gap.
_HORIZON_DAYS = 8

# Names present in the tz database directory that are not zones a callee lives in.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@dataclass(frozen=True)
class CallingWindow:
    days: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        # Accept any iterable of ints from Python callers, but store a frozenset so
        # windows stay hashable and comparable.
        days = frozenset(self.days)
        if not days:
            raise InvalidInput("days must list at least one weekday", field="days")
        if any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 7 for d in days):
            raise InvalidInput("days must be ISO weekdays 1 (Monday) to 7 (Sunday)", field="days")
        object.__setattr__(self, "days", days)
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, time) or value.tzinfo is not None:
                raise InvalidInput(f"{name} must be a local time without a time zone", field=name)
        if self.start == self.end:
            raise InvalidInput("start and end must differ (a window cannot be empty or 24 hours long)",
                               field="end")

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    @classmethod
    def from_dict(cls, data: Any, *, prefix: str = "") -> CallingWindow:
        """{"days": ["mon", ...] or [1, ...], "start": "09:00", "end": "20:00"} -> CallingWindow.

        `prefix` is prepended to field names in errors (e.g. "calling_window.").
        """
        if not isinstance(data, Mapping):
            raise InvalidInput("calling window must be an object with days, start and end",
                               field=prefix.rstrip(".") or "calling_window")
        unknown = sorted(set(data) - {"days", "start", "end"})
        if unknown:
            raise InvalidInput(f"unknown calling window field(s): {', '.join(map(str, unknown))}",
                               field=f"{prefix}{unknown[0]}")
        for name in ("days", "start", "end"):
            if name not in data:
                raise InvalidInput(f"{name} is required", field=f"{prefix}{name}")
        days = _parse_days(data["days"], field=f"{prefix}days")
        start = _parse_time(data["start"], field=f"{prefix}start", allow_24=False)
        end = _parse_time(data["end"], field=f"{prefix}end", allow_24=True)
        if start == end:
            raise InvalidInput("start and end must differ (a window cannot be empty or 24 hours long)",
                               field=f"{prefix}end")
        return cls(days=days, start=start, end=end)

    def to_dict(self) -> dict[str, Any]:
        names = {number: name for name, number in DAY_NAMES.items()}
        return {"days": [names[d] for d in sorted(self.days)],
                "start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


def _parse_days(value: Any, *, field: str) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidInput('days must be a list such as ["mon", "tue"] or [1, 2]', field=field)
    days: set[int] = set()
    for item in value:
        if isinstance(item, str):
            key = item.strip().lower()
            number = DAY_NAMES.get(key) or _FULL_DAY_NAMES.get(key)
            if number is None:
                raise InvalidInput(f"days: unknown weekday {item!r}; use mon, tue, wed, thu, fri, sat, sun",
                                   field=field)
        elif isinstance(item, int) and not isinstance(item, bool) and 1 <= item <= 7:
            number = item
        else:
            raise InvalidInput(f"days: {item!r} is not a weekday; use 1 (Monday) to 7 (Sunday) or a name",
                               field=field)
        days.add(number)
    if not days:
        raise InvalidInput("days must list at least one weekday", field=field)
    return frozenset(days)


def _parse_time(value: Any, *, field: str, allow_24: bool) -> time:
    match = _TIME_RE.match(value.strip()) if isinstance(value, str) else None
    if match:
        hour, minute = int(match.group(1)), int(match.group(2))
        if allow_24 and (hour, minute) == (24, 0):
            return time(0, 0)  # "until midnight"; the occurrence then crosses midnight by zero minutes
        if hour < 24 and minute < 60:
            return time(hour, minute)
    hint = '"HH:MM" from "00:00" to "24:00"' if allow_24 else '"HH:MM" from "00:00" to "23:59"'
    raise InvalidInput(f"{field.rsplit('.', 1)[-1]} must be a local time {hint}", field=field)


# -- time zones -----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    # Checking against the installed list (not just "ZoneInfo() loads") rejects
    # file names such as "localtime" that load but are not real zones.
    return frozenset(available_timezones() - _NOT_ZONES)


def validate_timezone(name: Any, *, field: str = "timezone") -> str:
    """Return the IANA zone name (stripped) or raise InvalidInput naming `field`."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{field} must be an IANA time zone name such as America/New_York", field=field)
    name = name.strip()
    if name not in _known_zones():
        raise InvalidInput(f"{field}: unknown time zone {name!r}; use an IANA name such as America/New_York",
                           field=field)
    return name


def timezone_for(e164: str, default: str | None = None) -> str | None:
    """The callee's IANA time zone as far as the number alone tells, else `default`.

    Policy: a number is trusted only when libphonenumber maps it to exactly one
    zone (+1 212 -> America/New_York, +44 -> Europe/London). Numbers that map to
    several zones (US toll-free +1 800, mobile ranges in large countries, +61 8
    which covers both Adelaide and Perth) or to none (unassigned ranges) return
    `default`, because guessing one of several zones could call someone at 06:00.
    The caller then uses the contact's explicit `timezone` if it has one, or the
    campaign's default zone, or holds the contact back.

    `e164` is normalised with normalize_e164 (InvalidInput on a bad number);
    `default` is validated even when it is not needed, so a bad campaign default
    fails at once rather than on the first ambiguous number.
    """
    if default is not None:
        default = validate_timezone(default, field="default_timezone")
    number = phonenumbers.parse(normalize_e164(e164, field="phone"), None)
    zones = phonenumber_zones.time_zones_for_number(number)
    # A zone libphonenumber knows but the system tzdata does not (older tzdata)
    # is treated like "unknown" rather than an error: the number itself is fine.
    if len(zones) == 1 and zones[0] in _known_zones():
        return zones[0]
    return default


def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(validate_timezone(tz))


# -- evaluating windows -------------------------------------------------------------------------------

def _as_utc(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")
    return at.astimezone(UTC)


def _resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    """The earliest UTC instant at which the local clock reads `wall` or later.

    For a wall time that exists this is its (first) occurrence; for one inside a
    spring-forward gap it is the transition instant, i.e. the first existing local
    time after the gap. This is the whole DST policy described in the module doc.
    """
    # fold=0 is the earlier reading of a repeated wall time.
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=1 maps through the post-transition offset to an instant before
    # the transition, fold=0 through the pre-transition offset to one after it.
    # Transitions fall on whole seconds, so bisect over integer seconds.
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())  # local clock < wall
    hi = int(first.timestamp()) + 1                                            # local clock >= wall
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _occurrences(window: CallingWindow, zone: ZoneInfo, first_day: date,
                 last_day: date) -> Iterator[tuple[datetime, datetime]]:
    """[opens, closes) UTC intervals of the occurrences starting on first_day..last_day.

    The intervals come out sorted and disjoint: resolving is monotonic in wall time
    and consecutive occurrences do not overlap in wall time. Empty ones are skipped.
    """
    day = first_day
    while day <= last_day:
        if day.isoweekday() in window.days:
            end_day = day if window.start < window.end else day + timedelta(days=1)
            opens = _resolve(datetime.combine(day, window.start), zone)
            closes = _resolve(datetime.combine(end_day, window.end), zone)
            if opens < closes:
                yield opens, closes
        day += timedelta(days=1)


def _local_day(at: datetime, zone: ZoneInfo) -> date:
    return at.astimezone(zone).date()


def is_open(window: CallingWindow, tz: str, at: datetime) -> bool:
    """Whether `at` lies inside an occurrence of the window in zone `tz`."""
    zone, at = _zone(tz), _as_utc(at)
    day = _local_day(at, zone)
    # The previous day's occurrence may still be running (midnight crossing); the
    # next day's can contain `at` when a fall-back transition happens at midnight.
    return any(opens <= at < closes
               for opens, closes in _occurrences(window, zone, day - timedelta(days=1), day + timedelta(days=1)))


def next_open(window: CallingWindow, tz: str, at: datetime) -> datetime:
    """The earliest UTC instant >= `at` at which the window is open (`at` itself if open now)."""
    zone, at = _zone(tz), _as_utc(at)
    day = _local_day(at, zone)
    for opens, closes in _occurrences(window, zone, day - timedelta(days=1), day + timedelta(days=_HORIZON_DAYS)):
        if closes > at:
            return max(opens, at)
    # Unreachable with real tz data: every enabled weekday recurs within 7 days and
    # a DST gap can swallow at most one occurrence in that span.
    raise RuntimeError(f"calling window {window} does not open within {_HORIZON_DAYS} days in {tz}")


def window_closes_at(window: CallingWindow, tz: str, at: datetime) -> datetime | None:
    """When the occurrence open at `at` closes (UTC), or None if the window is closed at `at`.

    Occurrences that touch (possible only when a DST gap swallows the pause between
    them) are treated as one, so the result is a real closing instant.
    """
    zone, at = _zone(tz), _as_utc(at)
    day = _local_day(at, zone)
    occurrences = _occurrences(window, zone, day - timedelta(days=1), day + timedelta(days=_HORIZON_DAYS))
    for opens, closes in occurrences:
        if opens > at:
            return None
        if at < closes:
            for next_opens, next_closes in occurrences:
                if next_opens != closes:
                    break
                closes = next_closes
            return closes
    return None
