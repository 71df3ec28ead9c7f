"""Capacity: an agency's Ultravox concurrency limit, shared by its callers and its campaigns.

An Ultravox account runs at most so many calls at once (5 on pay-as-you-go); above that
it answers 429. Three settings of the agency (`agencies` row) say how to share them:

  max_concurrent_calls  the limit of the agency's Ultravox plan; None: unlimited, and
                        nothing here is counted
  reserved_inbound      slots campaigns may never take, so callers get through while a
                        campaign runs (0 to max_concurrent_calls)
  inbound_wait_seconds  how long a caller who finds every slot taken is kept on hold

Live calls are counted in the database, so every web and worker process sees the same
number: calls of every kind (inbound, outbound, campaign, web, WebSocket) whose status is
not terminal and that hold an Ultravox call, or are being given one (an inbound claim,
still "created"). An inbound call answered with the fallback holds no Ultravox call and
is not counted. One indexed count (`ix_calls_agency_status`).

- The campaign dispatcher (campaigns/claim.py) never takes more than `campaign_slots`:
  max_concurrent_calls - reserved_inbound - live calls - claimed attempts that have no
  call yet, counted under the agency's lock (every dispatcher takes it to claim).
- An inbound call (services/inbound.py) is held when the count is at the limit, or when
  Ultravox answers 429 all the same: the caller hears hold audio and the carrier comes
  back to us (a signed `Waiting` state in the redirect URL, or in Telnyx Call Control's
  client_state), until a slot is free or `inbound_wait_seconds` have passed; then the
  number's fallback, or an apology.

The count is a forecast and Ultravox has the last word: two callers arriving together
may both see the last free slot, and the second one's 429 is handled like a full count.
A call whose end is never reported counts until the stale-call pass settles it (15 min
unanswered, 4 h answered): the agency's Ultravox webhook, or the carriers' status
callbacks, keep the count true.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, urlencode, urlsplit

from sqlalchemy import Table, bindparam, func, or_, select
from sqlalchemy.orm import Session

from .. import call_states
from ..config import get_config
from ..errors import InvalidInput, NotFound
from ..models import Agency, Call, DialAttempt
from ..signing import UrlSigner
from .campaigns.attempts import ATTEMPT_CLAIMED

MAX_CONCURRENT_CALLS_LIMIT = 10_000
MAX_INBOUND_WAIT_SECONDS = 600
DEFAULT_INBOUND_WAIT_SECONDS = 30
# A hold state is refused this long after the caller began to wait (far beyond any wait).
HOLD_STATE_TTL_SECONDS = 3600
HOLD_SIGNING_PURPOSE = "inbound hold"
# Query parameters of the redirect URL a held caller's carrier fetches.
HOLD_PARAMS = ("hold_since", "hold_round", "hold_sig")

LIVE_STATUSES = tuple(sorted(call_states.ALL - call_states.TERMINAL))


@dataclass(frozen=True)
class CapacitySettings:
    max_concurrent_calls: int | None
    reserved_inbound: int
    inbound_wait_seconds: int


def get_capacity(session: Session, agency_id: uuid.UUID) -> CapacitySettings:
    agency = session.get(Agency, agency_id)
    if agency is None:
        raise NotFound("agency not found", field="agency_id")
    return _settings(agency)


_UNSET = object()


def set_capacity(session: Session, agency_id: uuid.UUID, *, max_concurrent_calls: object = _UNSET,
                 reserved_inbound: object = _UNSET, inbound_wait_seconds: object = _UNSET) -> CapacitySettings:
    """Change the given settings (max_concurrent_calls=None: unlimited); the result is
    validated as a whole: reserved_inbound may not exceed max_concurrent_calls, and needs
    one. Not committed."""
    agency = session.get(Agency, agency_id)
    if agency is None:
        raise NotFound("agency not found", field="agency_id")
    limit = agency.max_concurrent_calls if max_concurrent_calls is _UNSET else max_concurrent_calls
    reserved = agency.reserved_inbound if reserved_inbound is _UNSET else reserved_inbound
    wait = agency.inbound_wait_seconds if inbound_wait_seconds is _UNSET else inbound_wait_seconds
    if limit is not None and (not _is_int(limit) or not 1 <= cast(int, limit) <= MAX_CONCURRENT_CALLS_LIMIT):
        raise InvalidInput(f"max_concurrent_calls must be a whole number from 1 to {MAX_CONCURRENT_CALLS_LIMIT}, "
                           "or null for unlimited", field="max_concurrent_calls")
    if not _is_int(reserved) or cast(int, reserved) < 0:
        raise InvalidInput("reserved_inbound must be a whole number, 0 or more", field="reserved_inbound")
    if cast(int, reserved) > 0 and limit is None:
        raise InvalidInput("reserved_inbound needs max_concurrent_calls (slots are reserved out of a limit)",
                           field="reserved_inbound")
    if limit is not None and cast(int, reserved) > cast(int, limit):
        raise InvalidInput(f"reserved_inbound ({reserved}) may not exceed max_concurrent_calls ({limit})",
                           field="reserved_inbound")
    if not _is_int(wait) or not 0 <= cast(int, wait) <= MAX_INBOUND_WAIT_SECONDS:
        raise InvalidInput(f"inbound_wait_seconds must be a whole number from 0 to {MAX_INBOUND_WAIT_SECONDS}",
                           field="inbound_wait_seconds")
    agency.max_concurrent_calls = cast("int | None", limit)
    agency.reserved_inbound = cast(int, reserved)
    agency.inbound_wait_seconds = cast(int, wait)
    session.flush()
    return _settings(agency)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _settings(agency: Agency) -> CapacitySettings:
    return CapacitySettings(max_concurrent_calls=agency.max_concurrent_calls,
                            reserved_inbound=agency.reserved_inbound or 0,
                            inbound_wait_seconds=agency.inbound_wait_seconds
                            if agency.inbound_wait_seconds is not None else DEFAULT_INBOUND_WAIT_SECONDS)


# -- counting ------------------------------------------------------------------------------

# Built once (the inbound webhook is a hot path): the agency's calls that hold, or are
# being given, an Ultravox call.
_calls = cast(Table, Call.__table__)
_LIVE_CALLS = (select(func.count()).select_from(_calls)
               .where(_calls.c.agency_id == bindparam("agency_id"), _calls.c.status.in_(LIVE_STATUSES),
                      or_(_calls.c.ultravox_call_id.is_not(None), _calls.c.status == call_states.CREATED)))


# An inbound caller's own call (connected on an earlier try, then the carrier repeated
# the request) must not count against it: the repeat gets the same answer, not a hold.
_LIVE_CALLS_BESIDES = _LIVE_CALLS.where(or_(_calls.c.carrier_call_id.is_(None),
                                            _calls.c.carrier_call_id != bindparam("carrier_call_id")))


def live_calls(session: Session, agency_id: uuid.UUID, *, besides: str | None = None) -> int:
    """The agency's live calls of every kind (see the module docstring); `besides`: not
    counting the call of that carrier call id."""
    if besides is None:
        return session.execute(_LIVE_CALLS, {"agency_id": agency_id}).scalar() or 0
    return session.execute(_LIVE_CALLS_BESIDES, {"agency_id": agency_id, "carrier_call_id": besides}).scalar() or 0


def campaign_slots(session: Session, agency_id: uuid.UUID) -> int | None:
    """How many more calls the agency's campaigns may start now without leaving fewer
    than reserved_inbound slots free; None when the agency has no limit. Call it under the
    agency's claim lock (campaigns/claim.py), so dispatchers never count the same slot."""
    row = session.execute(select(Agency.max_concurrent_calls, Agency.reserved_inbound)
                          .where(Agency.id == agency_id)).first()
    if row is None or row.max_concurrent_calls is None:
        return None
    # Claimed attempts have no Ultravox call yet: they will take a slot in a moment.
    claimed = session.scalar(select(func.count()).select_from(DialAttempt).where(
        DialAttempt.agency_id == agency_id, DialAttempt.state == ATTEMPT_CLAIMED, DialAttempt.call_id.is_(None))) or 0
    return max(0, row.max_concurrent_calls - (row.reserved_inbound or 0) - live_calls(session, agency_id) - claimed)


# -- the hold loop's state -------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """A held caller: waiting since `since` (unix seconds), `round` holds so far."""

    since: int
    round: int

    def next(self) -> "Waiting":
        return Waiting(since=self.since, round=self.round + 1)


def _signer() -> UrlSigner:
    return UrlSigner(get_config().credentials_keys, HOLD_SIGNING_PURPOSE)


def _message(carrier: str, carrier_call_id: str, waiting: Waiting, extra: str = "") -> str:
    return f"{carrier}|{carrier_call_id}|{waiting.since}|{waiting.round}|{extra}"


def sign_waiting(carrier: str, carrier_call_id: str, waiting: Waiting, extra: str = "") -> str:
    """The signature of a hold state, bound to the carrier call (and `extra`)."""
    _, signature = _signer().sign(_message(carrier, carrier_call_id, waiting, extra),
                                  ttl_seconds=HOLD_STATE_TTL_SECONDS, now=waiting.since)
    return signature


def verify_waiting(carrier: str, carrier_call_id: str, waiting: Waiting, signature: str, extra: str = "") -> bool:
    return _signer().verify(_message(carrier, carrier_call_id, waiting, extra),
                            waiting.since + HOLD_STATE_TTL_SECONDS, signature)


def redirect_url(public_url: str, carrier: str, carrier_call_id: str, waiting: Waiting) -> str:
    """The URL of this webhook (its query replaced) carrying the signed hold state. The
    carrier fetches it when the hold audio ends (Twilio and Plivo also sign it)."""
    base = public_url.split("?", 1)[0]
    query = urlencode({"hold_since": waiting.since, "hold_round": waiting.round,
                       "hold_sig": sign_waiting(carrier, carrier_call_id, waiting)})
    return f"{base}?{query}"


def waiting_from_url(public_url: str, carrier: str, carrier_call_id: str) -> Waiting | None:
    """The hold state of a redirected webhook; None when there is none, or it is not ours
    (bad signature, another call's, too old): the call is then treated as just arrived."""
    query = parse_qs(urlsplit(public_url).query)
    values = [query.get(name, [""])[0] for name in HOLD_PARAMS]
    if not all(values):
        return None
    return _parse_waiting(values[0], values[1], values[2], carrier, carrier_call_id)


def _parse_waiting(since: str, round_: str, signature: str, carrier: str, carrier_call_id: str,
                   extra: str = "") -> Waiting | None:
    if not (since.isdigit() and round_.isdigit()) or len(since) > 12 or len(round_) > 6:
        return None
    waiting = Waiting(since=int(since), round=int(round_))
    return waiting if verify_waiting(carrier, carrier_call_id, waiting, signature, extra) else None


def hold_state(carrier: str, carrier_call_id: str, waiting: Waiting, from_number: str, to_number: str) -> str:
    """The hold state of an event-driven carrier (Telnyx Call Control's client_state):
    later events of the call carry no numbers, so the state names them too."""
    extra = f"{from_number}|{to_number}"
    signature = sign_waiting(carrier, carrier_call_id, waiting, extra)
    # The caller's number last: it may be anything (a SIP URI has colons); ours is E.164.
    return f"{waiting.since}:{waiting.round}:{signature}:{to_number}:{from_number}"


def waiting_from_state(state: str, carrier: str, carrier_call_id: str) -> tuple[Waiting, str, str] | None:
    """(waiting, from number, to number) of a `hold_state`, or None when it is not ours."""
    parts = state.split(":", 4)
    if len(parts) != 5:
        return None
    since, round_, signature, to_number, from_number = parts
    waiting = _parse_waiting(since, round_, signature, carrier, carrier_call_id, f"{from_number}|{to_number}")
    return (waiting, from_number, to_number) if waiting is not None else None
