"""Calling windows: parsing, local-time evaluation, DST policy, and property tests."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.errors import InvalidInput
from telephony.services.campaigns.windows import (
    CallingWindow,
    is_open,
    next_open,
    timezone_for,
    validate_timezone,
    window_closes_at,
)

UTC = timezone.utc
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def window(start: str, end: str, days=ALL_DAYS) -> CallingWindow:
    return CallingWindow.from_dict({"days": days, "start": start, "end": end})


def local(tz: str, *args, fold: int = 0) -> datetime:
    """A wall time in `tz` as a UTC instant (fold=0: first occurrence)."""
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- parsing ----------------------------------------------------------------------------------------------

def test_from_dict_accepts_names_and_numbers():
    a = CallingWindow.from_dict({"days": ["Mon", "tue", "Wednesday"], "start": "9:00", "end": "20:30"})
    b = CallingWindow.from_dict({"days": [3, 2, 1, 1], "start": "09:00", "end": "20:30"})
    assert a == b == CallingWindow(days=frozenset({1, 2, 3}), start=time(9), end=time(20, 30))
    assert a.to_dict() == {"days": ["mon", "tue", "wed"], "start": "09:00", "end": "20:30"}
    assert CallingWindow.from_dict(a.to_dict()) == a
    assert not a.crosses_midnight


def test_end_24_00_means_until_midnight():
    w = window("18:00", "24:00")
    assert w == window("18:00", "00:00") and w.end == time(0) and w.crosses_midnight
    tz = "Europe/Paris"
    assert is_open(w, tz, local(tz, 2026, 1, 5, 23, 59, 59))
    assert not is_open(w, tz, local(tz, 2026, 1, 6, 0, 0))
    assert window_closes_at(w, tz, local(tz, 2026, 1, 5, 18)) == local(tz, 2026, 1, 6, 0, 0)


@pytest.mark.parametrize("data, field, fragment", [
    ({"days": [], "start": "09:00", "end": "17:00"}, "days", "at least one"),
    ({"days": "mon", "start": "09:00", "end": "17:00"}, "days", "must be a list"),
    ({"days": ["funday"], "start": "09:00", "end": "17:00"}, "days", "funday"),
    ({"days": [0], "start": "09:00", "end": "17:00"}, "days", "not a weekday"),
    ({"days": [8], "start": "09:00", "end": "17:00"}, "days", "not a weekday"),
    ({"days": [True], "start": "09:00", "end": "17:00"}, "days", "not a weekday"),
    ({"days": ["mon"], "start": "9am", "end": "17:00"}, "start", "HH:MM"),
    ({"days": ["mon"], "start": "24:00", "end": "17:00"}, "start", "23:59"),
    ({"days": ["mon"], "start": "09:00", "end": "25:00"}, "end", "HH:MM"),
    ({"days": ["mon"], "start": "09:00", "end": "17:60"}, "end", "HH:MM"),
    ({"days": ["mon"], "start": 900, "end": "17:00"}, "start", "HH:MM"),
    ({"days": ["mon"], "start": "09:00", "end": "09:00"}, "end", "must differ"),
    ({"days": ["mon"], "start": "00:00", "end": "24:00"}, "end", "must differ"),
    ({"days": ["mon"], "start": "09:00"}, "end", "required"),
    ({"days": ["mon"], "start": "09:00", "end": "17:00", "tz": "UTC"}, "tz", "unknown"),
])
def test_from_dict_errors_name_the_field(data, field, fragment):
    with pytest.raises(InvalidInput) as exc:
        CallingWindow.from_dict(data)
    assert exc.value.field == field
    assert fragment in exc.value.message


def test_from_dict_prefix_and_non_object():
    with pytest.raises(InvalidInput) as exc:
        CallingWindow.from_dict({"days": [], "start": "09:00", "end": "17:00"}, prefix="calling_window.")
    assert exc.value.field == "calling_window.days"
    with pytest.raises(InvalidInput) as exc:
        CallingWindow.from_dict(["mon"])
    assert exc.value.field == "calling_window"


def test_direct_construction_is_validated_too():
    with pytest.raises(InvalidInput):
        CallingWindow(days=frozenset(), start=time(9), end=time(17))
    with pytest.raises(InvalidInput):
        CallingWindow(days=frozenset({1}), start=time(9), end=time(9))
    with pytest.raises(InvalidInput):
        CallingWindow(days=frozenset({1}), start=time(9, tzinfo=UTC), end=time(17))
    assert CallingWindow(days={1, 2}, start=time(9), end=time(17)).days == frozenset({1, 2})  # type: ignore[arg-type]


# -- plain evaluation ---------------------------------------------------------------------------------------

WEEKDAYS_9_TO_8 = window("09:00", "20:00", ["mon", "tue", "wed", "thu", "fri"])
NY = "America/New_York"


def test_weekday_open_weekend_closed():
    assert date(2026, 1, 5).isoweekday() == 1  # a Monday
    assert is_open(WEEKDAYS_9_TO_8, NY, local(NY, 2026, 1, 5, 12))
    assert is_open(WEEKDAYS_9_TO_8, NY, local(NY, 2026, 1, 9, 19, 59))      # Friday
    assert not is_open(WEEKDAYS_9_TO_8, NY, local(NY, 2026, 1, 10, 12))     # Saturday
    assert not is_open(WEEKDAYS_9_TO_8, NY, local(NY, 2026, 1, 11, 12))     # Sunday
    # Friday after hours -> Monday 09:00.
    assert next_open(WEEKDAYS_9_TO_8, NY, local(NY, 2026, 1, 9, 20)) == local(NY, 2026, 1, 12, 9)


def test_start_inclusive_end_exclusive():
    start, end = local(NY, 2026, 1, 5, 9), local(NY, 2026, 1, 5, 20)
    tiny = timedelta(microseconds=1)
    assert is_open(WEEKDAYS_9_TO_8, NY, start)
    assert not is_open(WEEKDAYS_9_TO_8, NY, start - tiny)
    assert is_open(WEEKDAYS_9_TO_8, NY, end - tiny)
    assert not is_open(WEEKDAYS_9_TO_8, NY, end)
    assert next_open(WEEKDAYS_9_TO_8, NY, start - tiny) == start
    assert next_open(WEEKDAYS_9_TO_8, NY, start) == start
    assert next_open(WEEKDAYS_9_TO_8, NY, start + timedelta(hours=3)) == start + timedelta(hours=3)
    assert window_closes_at(WEEKDAYS_9_TO_8, NY, start) == end
    assert window_closes_at(WEEKDAYS_9_TO_8, NY, end - tiny) == end
    assert window_closes_at(WEEKDAYS_9_TO_8, NY, end) is None


def test_same_instant_differs_by_callee_zone():
    at = utc(2026, 1, 5, 15)  # 10:00 in New York, 07:00 in Los Angeles, 02:00 Tuesday in Sydney
    assert is_open(WEEKDAYS_9_TO_8, "America/New_York", at)
    assert not is_open(WEEKDAYS_9_TO_8, "America/Los_Angeles", at)
    assert next_open(WEEKDAYS_9_TO_8, "America/Los_Angeles", at) == utc(2026, 1, 5, 17)
    assert next_open(WEEKDAYS_9_TO_8, "Australia/Sydney", at) == local("Australia/Sydney", 2026, 1, 6, 9)


def test_aware_non_utc_input_is_accepted_and_naive_rejected():
    at = datetime(2026, 1, 5, 12, tzinfo=ZoneInfo(NY))
    assert is_open(WEEKDAYS_9_TO_8, NY, at)
    assert next_open(WEEKDAYS_9_TO_8, NY, at).tzinfo is UTC
    with pytest.raises(ValueError):
        is_open(WEEKDAYS_9_TO_8, NY, datetime(2026, 1, 5, 12))


def test_midnight_crossing_belongs_to_the_evening_it_started():
    fri_night = window("20:00", "02:00", ["fri"])
    tz = "Europe/Berlin"
    assert date(2026, 1, 9).isoweekday() == 5
    assert is_open(fri_night, tz, local(tz, 2026, 1, 9, 20))
    assert is_open(fri_night, tz, local(tz, 2026, 1, 9, 23, 59))
    assert is_open(fri_night, tz, local(tz, 2026, 1, 10, 1, 59))        # Saturday 01:59, Friday's occurrence
    assert not is_open(fri_night, tz, local(tz, 2026, 1, 10, 2))
    assert not is_open(fri_night, tz, local(tz, 2026, 1, 9, 1))         # Friday 01:00 belongs to Thursday
    assert not is_open(fri_night, tz, local(tz, 2026, 1, 10, 21))       # Saturday evening
    assert window_closes_at(fri_night, tz, local(tz, 2026, 1, 9, 22)) == local(tz, 2026, 1, 10, 2)
    assert next_open(fri_night, tz, local(tz, 2026, 1, 10, 3)) == local(tz, 2026, 1, 16, 20)

    sat_night = window("20:00", "02:00", ["sat"])
    assert not is_open(sat_night, tz, local(tz, 2026, 1, 10, 1))        # Saturday 01:00 is Friday's
    assert is_open(sat_night, tz, local(tz, 2026, 1, 11, 1))            # Sunday 01:00 is Saturday's


def test_unknown_timezone_is_invalid_input():
    for bad in ("Mars/Olympus_Mons", "", "localtime", "../etc/passwd", None):
        with pytest.raises(InvalidInput) as exc:
            is_open(WEEKDAYS_9_TO_8, bad, utc(2026, 1, 5))  # type: ignore[arg-type]
        assert exc.value.field == "timezone"
    assert validate_timezone(" Asia/Kolkata ") == "Asia/Kolkata"


# -- time zone from the number ------------------------------------------------------------------------------

@pytest.mark.parametrize("number, expected", [
    ("+1 212 555 0123", "America/New_York"),
    ("+12125550123", "America/New_York"),
    ("+44 20 7183 8750", "Europe/London"),
    ("+61 2 9374 4000", "Australia/Sydney"),
    ("+1 800 555 0100", None),         # US toll-free: dozens of zones
    ("+61 8 8200 0000", None),         # +61 8 covers Adelaide and Perth
    ("+1 555 555 0100", None),         # no zone known
])
def test_timezone_for(number, expected):
    assert timezone_for(number) == expected


def test_timezone_for_default_and_errors():
    assert timezone_for("+18005550100", default="America/Chicago") == "America/Chicago"
    assert timezone_for("+12125550123", default="America/Chicago") == "America/New_York"
    with pytest.raises(InvalidInput) as exc:
        timezone_for("+12125550123", default="America/Nowhere")
    assert exc.value.field == "default_timezone"
    with pytest.raises(InvalidInput) as exc:
        timezone_for("2125550123")
    assert exc.value.field == "phone"


# -- DST ------------------------------------------------------------------------------------------------------

def test_new_york_spring_forward_gap_opens_at_first_existing_time():
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC); 02:30 does not exist.
    w = window("02:30", "05:00")
    assert next_open(w, NY, local(NY, 2026, 3, 8, 0)) == utc(2026, 3, 8, 7)       # 03:00 EDT
    assert not is_open(w, NY, utc(2026, 3, 8, 7) - timedelta(microseconds=1))      # 01:59:59.999999 EST
    assert window_closes_at(w, NY, utc(2026, 3, 8, 7)) == utc(2026, 3, 8, 9)       # 05:00 EDT
    # The days around it are ordinary.
    assert next_open(w, NY, local(NY, 2026, 3, 7, 0)) == utc(2026, 3, 7, 7, 30)   # 02:30 EST
    assert next_open(w, NY, local(NY, 2026, 3, 9, 0)) == utc(2026, 3, 9, 6, 30)   # 02:30 EDT
    # A window ending inside the gap closes at the first existing time after it.
    night = window("22:00", "02:30", ["sat"])
    assert window_closes_at(night, NY, local(NY, 2026, 3, 7, 23)) == utc(2026, 3, 8, 7)


def test_new_york_window_entirely_in_gap_is_skipped_that_day():
    w = window("02:00", "02:45", ["sun"])
    at = local(NY, 2026, 3, 8, 0)
    assert next_open(w, NY, at) == local(NY, 2026, 3, 15, 2)     # next Sunday, 06:00 UTC
    assert not is_open(w, NY, utc(2026, 3, 8, 7))


def test_new_york_ordinary_window_shifts_utc_hour_across_dst():
    assert next_open(WEEKDAYS_9_TO_8, NY, utc(2026, 3, 6, 2)) == utc(2026, 3, 6, 14)   # Fri 09:00 EST
    assert next_open(WEEKDAYS_9_TO_8, NY, utc(2026, 3, 7, 2)) == utc(2026, 3, 9, 13)   # Mon 09:00 EDT
    assert next_open(WEEKDAYS_9_TO_8, NY, utc(2026, 10, 31, 4)) == utc(2026, 11, 2, 14)  # Mon 09:00 EST


def test_new_york_fall_back_overlap_uses_first_occurrence_without_double_counting():
    # 2026-11-01: 02:00 EDT (06:00 UTC) falls back to 01:00 EST; 01:00-02:00 happens twice.
    w = window("01:30", "05:00", ["sun"])
    opens = next_open(w, NY, local(NY, 2026, 11, 1, 0))
    assert opens == utc(2026, 11, 1, 5, 30)                                 # the first 01:30 (EDT)
    assert window_closes_at(w, NY, opens) == utc(2026, 11, 1, 10)           # 05:00 EST: 4.5 h, no gap
    assert is_open(w, NY, utc(2026, 11, 1, 6, 15))                          # 01:15 EST, the repeated hour

    night = window("22:00", "01:30", ["sat"])
    assert window_closes_at(night, NY, local(NY, 2026, 10, 31, 23)) == utc(2026, 11, 1, 5, 30)
    assert not is_open(night, NY, local(NY, 2026, 11, 1, 1, 15, fold=1))  # repeated 01:15 EST: not reopened

    repeated_hour = window("01:00", "01:30", ["sun"])
    assert next_open(repeated_hour, NY, local(NY, 2026, 11, 1, 0)) == utc(2026, 11, 1, 5)
    assert window_closes_at(repeated_hour, NY, utc(2026, 11, 1, 5)) == utc(2026, 11, 1, 5, 30)
    # The second pass through 01:00-01:30 (EST) is not a second occurrence.
    assert not is_open(repeated_hour, NY, utc(2026, 11, 1, 6, 10))
    assert next_open(repeated_hour, NY, utc(2026, 11, 1, 6)) == local(NY, 2026, 11, 8, 1)


def test_london_changes():
    tz = "Europe/London"
    # 2026-03-29: 01:00 GMT -> 02:00 BST at 01:00 UTC.
    assert next_open(window("01:15", "03:00"), tz, utc(2026, 3, 29, 0)) == utc(2026, 3, 29, 1)
    assert next_open(WEEKDAYS_9_TO_8, tz, utc(2026, 3, 27, 0)) == utc(2026, 3, 27, 9)   # Fri 09:00 GMT
    assert next_open(WEEKDAYS_9_TO_8, tz, utc(2026, 3, 28, 0)) == utc(2026, 3, 30, 8)   # Mon 09:00 BST
    # 2026-10-25: 02:00 BST -> 01:00 GMT at 01:00 UTC.
    w = window("01:30", "02:30", ["sun"])
    assert next_open(w, tz, utc(2026, 10, 24, 22)) == utc(2026, 10, 25, 0, 30)          # 01:30 BST
    assert window_closes_at(w, tz, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 2, 30)


def test_sydney_april_and_october_changes():
    tz = "Australia/Sydney"
    # 2026-04-05: 03:00 AEDT -> 02:00 AEST (16:00 UTC on the 4th); 02:00-03:00 happens twice.
    w = window("02:30", "04:00", ["sun"])
    opens = next_open(w, tz, local(tz, 2026, 4, 5, 0))
    assert opens == utc(2026, 4, 4, 15, 30)                                  # first 02:30 (AEDT)
    assert window_closes_at(w, tz, opens) == utc(2026, 4, 4, 18)             # 04:00 AEST
    # 2026-10-04: 02:00 AEST -> 03:00 AEDT (16:00 UTC on the 3rd); 02:30 does not exist.
    assert next_open(w, tz, local(tz, 2026, 10, 4, 0)) == utc(2026, 10, 3, 16)
    assert window_closes_at(w, tz, utc(2026, 10, 3, 16)) == utc(2026, 10, 3, 17)  # 04:00 AEDT
    assert next_open(WEEKDAYS_9_TO_8, tz, utc(2026, 10, 1, 12)) == utc(2026, 10, 1, 23)  # Fri 09:00 AEST
    assert next_open(WEEKDAYS_9_TO_8, tz, utc(2026, 10, 3, 0)) == utc(2026, 10, 4, 22)   # Mon 09:00 AEDT


def test_touching_occurrences_merge_when_a_gap_swallows_the_pause():
    # Saturday 22:00 - Sunday 02:15 and Sunday 02:30 - 04:00: on 2026-03-08 in New York
    # both ends resolve to 03:00 EDT, so the window is continuously open.
    w = window("22:00", "02:15", ["sat"])
    w2 = CallingWindow(days=frozenset({6, 7}), start=time(2, 30), end=time(2, 15))
    assert window_closes_at(w, NY, local(NY, 2026, 3, 7, 23)) == utc(2026, 3, 8, 7)
    # w2: Saturday 02:30 -> Sunday 02:15, Sunday 02:30 -> Monday 02:15.
    assert window_closes_at(w2, NY, local(NY, 2026, 3, 7, 23)) == local(NY, 2026, 3, 9, 2, 15)
    assert is_open(w2, NY, utc(2026, 3, 8, 7))


# -- properties -----------------------------------------------------------------------------------------------

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Sydney", "Asia/Kolkata", "Australia/Adelaide",
         "Australia/Lord_Howe", "America/St_Johns", "Asia/Kathmandu", "Pacific/Chatham", "America/Santiago",
         "America/Havana", "Africa/Casablanca"]
FIRST, LAST = utc(2025, 1, 1), utc(2029, 1, 1)


@lru_cache(maxsize=None)
def transitions(tz: str) -> tuple[datetime, ...]:
    """UTC instants in 2025-2028 at which the zone's offset changes (to the second)."""
    zone = ZoneInfo(tz)
    offset = lambda s: datetime.fromtimestamp(s, zone).utcoffset()  # noqa: E731
    found = []
    step = 6 * 3600
    for lo in range(int(FIRST.timestamp()), int(LAST.timestamp()), step):
        hi = lo + step
        if offset(lo) != offset(hi):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if offset(lo) != offset(mid) else (mid, hi)
            found.append(datetime.fromtimestamp(hi, UTC))
    return tuple(found)


TIMES = st.one_of(
    # Times near typical transition hours and midnight are the interesting ones.
    st.sampled_from([time(h, m) for h in (0, 1, 2, 3, 23) for m in (0, 15, 30, 45)]),
    st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)
WINDOWS = st.builds(lambda days, start, end: (days, start, end),
                    st.frozensets(st.integers(1, 7), min_size=1), TIMES, TIMES) \
    .filter(lambda t: t[1] != t[2]) \
    .map(lambda t: CallingWindow(days=t[0], start=t[1], end=t[2]))


@st.composite
def zone_and_instant(draw) -> tuple[str, datetime]:
    tz = draw(st.sampled_from(ZONES))
    near = transitions(tz)
    if near and draw(st.booleans()):
        # Half of the instants land within 36 h of a DST transition.
        base = draw(st.sampled_from(near))
        at = base + timedelta(seconds=draw(st.integers(-36 * 3600, 36 * 3600)),
                              microseconds=draw(st.sampled_from([0, 0, 1, 999_999])))
    else:
        at = draw(st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)))
        at = at.replace(tzinfo=UTC)
    return tz, at


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.too_slow])
TINY = timedelta(microseconds=1)


def between(a: datetime, b: datetime, points: int = 8) -> list[datetime]:
    """Instants strictly between a and b: evenly spaced ones plus the last second/minute before b."""
    span = b - a
    inner = [a + span * i / (points + 1) for i in range(1, points + 1)]
    inner += [b - TINY, b - timedelta(seconds=1), b - timedelta(minutes=1)]
    return [t for t in inner if a < t < b]


@PROPERTY_SETTINGS
@given(WINDOWS, zone_and_instant())
def test_next_open_properties(w, zone_at):
    tz, at = zone_at
    opens = next_open(w, tz, at)
    assert opens >= at
    assert opens - at <= timedelta(days=8)
    assert opens.tzinfo is UTC
    assert is_open(w, tz, opens)
    assert next_open(w, tz, opens) == opens                   # idempotent
    assert (opens == at) == is_open(w, tz, at)
    for t in between(at, opens):
        assert not is_open(w, tz, t), t


@PROPERTY_SETTINGS
@given(WINDOWS, zone_and_instant())
def test_window_closes_at_properties(w, zone_at):
    tz, at = zone_at
    assert (window_closes_at(w, tz, at) is None) == (not is_open(w, tz, at))
    opened = next_open(w, tz, at)
    closes = window_closes_at(w, tz, opened)
    assert closes is not None and closes > opened
    assert is_open(w, tz, closes - TINY)
    assert not is_open(w, tz, closes)
    for t in between(opened, closes):
        assert is_open(w, tz, t), t
        assert window_closes_at(w, tz, t) == closes


def wall_clock_open(w: CallingWindow, tz: str, at: datetime) -> bool:
    """The naive definition (compare the local clock), right wherever no DST change is near."""
    now = at.astimezone(ZoneInfo(tz))
    today, yesterday = now.isoweekday(), (now - timedelta(days=1)).isoweekday()
    clock = now.time().replace(tzinfo=None)
    if w.start < w.end:
        return today in w.days and w.start <= clock < w.end
    return (today in w.days and clock >= w.start) or (yesterday in w.days and clock < w.end)


@PROPERTY_SETTINGS
@given(WINDOWS, zone_and_instant())
def test_is_open_matches_the_wall_clock_away_from_transitions(w, zone_at):
    tz, at = zone_at
    if all(abs(at - t) > timedelta(hours=50) for t in transitions(tz)):
        assert is_open(w, tz, at) == wall_clock_open(w, tz, at)


def test_the_transition_table_is_sane():
    assert transitions("UTC") == () and transitions("Asia/Kolkata") == ()
    assert utc(2026, 3, 8, 7) in transitions("America/New_York")
    assert len(transitions("America/New_York")) == 8
