"""Answering a carrier's inbound-call webhook: the caller talks to the agency's agent.

The normal path issues three SQL statements, each a transaction of its own run on the
driver's connection (telephony/direct_sql.py: one round trip each, no BEGIN or COMMIT),
and holds no database connection while Ultravox is asked for the call:

1. SELECT the dialled number, its agent, the agency's credit balance and its credential
   rows (encrypted).
   Unknown or carrier-mismatched numbers get a "not in service" message without
   verification: there are no credentials to verify with, and the answer is a fixed
   message that writes nothing and starts nothing. The carrier credentials are
   decrypted and the signature verified; a missing, forged or (Telnyx) replayed
   signature raises SignatureRejected (403) with nothing written.
2-3. `calls.start_call(..., claim_first=True)`, the path every call takes, in its
   inbound order:
2. INSERT the call ON CONFLICT (source, carrier_call_id) DO NOTHING, in autocommit: the
   atomic claim. A repeated webhook for the same carrier call loses it and gets the same
   answer as the first one, without a second Ultravox call.
3. POST /api/agents/{id}/calls, timeout = INBOUND_ULTRAVOX_BUDGET; then UPDATE the call
   with the Ultravox id and joinUrl (or what was answered instead), in autocommit. That
   last write is handed back as `InboundOutcome.pending_write` and runs once the answer
   is on its way to the carrier (the webhook blueprint runs it when the response is
   closed): the caller does not wait for it, and the row is already claimed.

An agency with a concurrency limit costs one more statement before 2: the count of its
live calls (services/capacity.py). At the limit, or when Ultravox answers 429, the caller
is held (hold audio, then the carrier comes back with a signed hold state: a redirect URL,
or Telnyx Call Control's client_state) until a slot frees or inbound_wait_seconds pass.

Whatever else fails after that (Ultravox error, 503, timeout, database outage, a bug) the
caller is forwarded to the number's fallback, or hears an apology: never an error page.
If the call cannot be written, the caller is connected anyway; the Ultravox call's
metadata (our call id, agency, agent, carrier and carrier call id, numbers) is what the
Ultravox webhook ingest needs to rebuild the row.
"""
from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .. import call_states, direct_sql
from ..carriers.base import Answer, CarrierAdapter, Hold, InboundCall, WebhookRequest
from ..carriers.registry import get_carriers
from ..carriers.telnyx_call_control import CallControlEvent, TelnyxCallControl
from ..config import get_config
from ..credentials import ProviderCredentials, get_credentials
from ..db import Database, end_reads_before_writing, rollback_quietly
from ..direct_sql import DirectStatement
from ..errors import InvalidInput
from ..logging import agency_id_var
from ..models import Agency, AgencyCredential, AgentMapping, Call, CallDirection, CallSource, PhoneNumber, utcnow
from ..ultravox_errors import UltravoxRateLimited
from . import call_status, calls, capacity, carrier_webhooks
from .carrier_webhooks import SignatureRejected
from .idempotency import first_time
from .phone_numbers import normalize_e164

log = logging.getLogger(__name__)

APOLOGY = "We are sorry, we cannot take your call right now. Please try again later. Goodbye."
NOT_IN_SERVICE = "The number you have called is not in service. Goodbye."
# A repeated webhook whose first delivery is still waiting on Ultravox polls for its
# answer; after the Ultravox budget plus this grace the first request is presumed dead.
DUPLICATE_GRACE_SECONDS = 2.0
DUPLICATE_POLL_SECONDS = 0.05
# A caller held for a free slot (services/capacity.py): what they hear first, and how long
# each pause between two tries lasts when no hold audio is configured (HOLD_AUDIO_URL).
HOLD_MESSAGE = "Thank you for calling. All our lines are busy right now; please hold and we will connect you."
HOLD_PAUSE_SECONDS = 5


@dataclass(frozen=True, slots=True)
class RouteAgent:
    """The number's agent as read with the route (calls.CallAgent): plain values, no ORM
    instance to build on every webhook."""

    id: uuid.UUID
    ultravox_agent_id: str
    recording_enabled: bool
    transfer_targets: list[dict[str, Any]]


@dataclass(frozen=True)
class Route:
    agency_id: uuid.UUID
    e164: str
    fallback_number: str | None
    recording_enabled: bool | None  # the number's own setting; None follows the agent
    credit_balance: int  # the agency's (no credit: no agent, see calls.start_call)
    agent: RouteAgent | None
    max_concurrent_calls: int | None = None  # the agency's capacity (services/capacity.py)
    inbound_wait_seconds: int = capacity.DEFAULT_INBOUND_WAIT_SECONDS


@dataclass(frozen=True)
class HeldCall:
    """A held caller coming back (Telnyx Call Control: its state names the numbers,
    which its later events do not carry)."""

    call: InboundCall
    waiting: capacity.Waiting


@dataclass
class InboundOutcome:
    """The answer, and the carrier credentials once the request was verified (Telnyx
    Call Control needs them to carry the answer out through the REST API)."""

    answer: Answer = field(default_factory=lambda: Answer.say(APOLOGY))
    agency_id: uuid.UUID | None = None
    credentials: ProviderCredentials | None = None
    ultravox_seconds: float | None = None  # time spent waiting on Ultravox (Server-Timing)
    # The write that records the answer on the claimed call row. Not needed to answer,
    # so the caller does not wait for it: run it with `store_pending_write` after the
    # answer is sent. Lost only if the process dies in between, and then repaired like a
    # failed write (from the Ultravox call's metadata).
    pending_write: calls.CallRecord | None = None


def find_route(session: Session, carrier: str, e164: str) -> Route | None:
    """The number (registered with this carrier), its agent and, in the same query, the
    owning agency's credential rows, which the signature check and the Ultravox call need
    next (handed to the credential store still encrypted: one round trip, not two).

    Plain columns, not ORM objects: the route outlives this read transaction, so it holds
    no ORM state that ending the transaction would expire (and reading it again cost
    another query)."""
    rows = direct_sql.run(session, _ROUTE_QUERY, {"e164": e164, "carrier": carrier}).rows
    if not rows:
        return None
    row = rows[0]
    get_credentials().remember_rows(session, row.agency_id, {
        r.credential_name: r.ciphertext for r in rows if r.credential_name is not None})
    agent = None
    if row.agent_id is not None:
        agent = RouteAgent(id=row.agent_id, ultravox_agent_id=row.ultravox_agent_id,
                           recording_enabled=row.agent_recording, transfer_targets=row.transfer_targets or [])
    return Route(agency_id=row.agency_id, e164=row.e164, fallback_number=row.fallback_number,
                 recording_enabled=row.recording_enabled, credit_balance=row.credit_balance, agent=agent,
                 max_concurrent_calls=row.max_concurrent_calls, inbound_wait_seconds=row.inbound_wait_seconds)


# Built once, from Core tables, and run on the driver's connection (telephony/direct_sql.py):
# a webhook is a hot path, and SQLAlchemy's execution path cost more than the statement.
# One row per credential of the agency (an agency has a handful), or one row with NULL
# credential columns.
_numbers, _agents, _secrets = PhoneNumber.__table__, AgentMapping.__table__, AgencyCredential.__table__
_agencies = Agency.__table__
_ROUTE_QUERY = DirectStatement(
    select(_numbers.c.agency_id, _numbers.c.e164, _numbers.c.fallback_number, _numbers.c.recording_enabled,
           _agencies.c.credit_balance, _agencies.c.max_concurrent_calls, _agencies.c.inbound_wait_seconds,
           _agents.c.id.label("agent_id"), _agents.c.ultravox_agent_id,
           _agents.c.recording_enabled.label("agent_recording"), _agents.c.transfer_targets,
           _secrets.c.name.label("credential_name"), _secrets.c.ciphertext)
    .select_from(_numbers)
    .join(_agencies, _agencies.c.id == _numbers.c.agency_id)
    .outerjoin(_agents, (_agents.c.id == _numbers.c.agent_id) & (_agents.c.agency_id == _numbers.c.agency_id))
    .outerjoin(_secrets, _secrets.c.agency_id == _numbers.c.agency_id)
    .where(_numbers.c.e164 == bindparam("e164"), _numbers.c.carrier == bindparam("carrier"))
)


def answer_inbound(session: Session, adapter: CarrierAdapter, request: WebhookRequest,
                   held: HeldCall | None = None) -> InboundOutcome:
    """What to tell the carrier about an inbound call (`held`: a held Call Control caller
    coming back). Raises only SignatureRejected."""
    outcome = InboundOutcome()
    try:
        _answer(session, adapter, request, outcome, held)
    except SignatureRejected:
        raise
    except Exception:
        # The catch-all: a bug or a database outage still answers (the apology, or the
        # fallback number once the request is verified), never an error page or silence.
        log.exception("inbound %s webhook failed; answering %s", adapter.name, outcome.answer.kind)
        rollback_quietly(session)
    return outcome


def _answer(session: Session, adapter: CarrierAdapter, request: WebhookRequest, outcome: InboundOutcome,
            held: HeldCall | None) -> None:
    call = held.call if held is not None else adapter.parse_inbound(request)
    to_number = _e164(call.to_number)
    route = find_route(session, adapter.name, to_number) if to_number else None
    if route is None:
        session.rollback()
        log.info("inbound %s call to %r: no such number here; not in service", adapter.name, call.to_number)
        outcome.answer = Answer.say(NOT_IN_SERVICE)
        return
    outcome.credentials = carrier_webhooks.verified_credentials(session, adapter, request, route.agency_id)
    outcome.agency_id = route.agency_id
    agency_id_var.set(str(route.agency_id))
    if route.agent is None or not call.carrier_call_id:
        session.rollback()
        log.info("inbound %s call to %s: no agent assigned; not in service", adapter.name, route.e164)
        outcome.answer = Answer.say(NOT_IN_SERVICE)
        return
    # From here on every failure forwards the caller rather than apologising, if it can.
    outcome.answer = Answer.dial(route.fallback_number) if route.fallback_number else Answer.say(APOLOGY)
    waiting: capacity.Waiting | None = held.waiting if held is not None else None
    if held is None and "hold_sig=" in request.public_url:
        # A redirected XML webhook: the caller's hold state is in its URL.
        waiting = capacity.waiting_from_url(request.public_url, adapter.name, call.carrier_call_id)
    outcome.answer = _connect(session, adapter, route, route.agent, call, outcome,
                              waiting or capacity.Waiting(since=int(time.time()), round=0), request.public_url)


def _connect(session: Session, adapter: CarrierAdapter, route: Route, agent: RouteAgent, call: InboundCall,
             outcome: InboundOutcome, waiting: capacity.Waiting, public_url: str) -> Answer:
    fallback = outcome.answer
    # Every slot taken: the caller waits on hold while they may (then one last try, whose
    # refusal answers the fallback). Counted only for an agency with a limit.
    may_wait = adapter.can_hold and time.time() - waiting.since < route.inbound_wait_seconds
    if may_wait and route.max_concurrent_calls is not None \
            and capacity.live_calls(session, route.agency_id, besides=call.carrier_call_id) \
            >= route.max_concurrent_calls:
        session.rollback()
        log.info("inbound call %s: all %d slots of the agency taken; holding (round %d)", call.carrier_call_id,
                 route.max_concurrent_calls, waiting.round)
        return _hold(adapter, call, waiting, public_url)
    from_number = _e164(call.from_number) or call.from_number[:64]
    new_call = calls.NewCall(
        agency_id=route.agency_id, agent=agent, medium=get_carriers().by_name(adapter.name).medium,
        source=CallSource(adapter.name), direction=CallDirection.inbound, first_speaker="agent",
        from_number=from_number, to_number=route.e164, carrier_call_id=call.carrier_call_id,
        template_context={"caller_number": from_number, "called_number": route.e164},
        recording_enabled=route.recording_enabled,  # None: the agent's setting
        credit_balance=route.credit_balance)
    try:
        started = calls.start_call(session, new_call, claim_first=True, timeout=_ultravox_timeout())
    except calls.CallNotStarted as exc:
        if may_wait and _refused_for_concurrency(exc.cause):
            # Ultravox is at the plan's limit all the same: give the claim back (the
            # caller's next try claims again) and hold.
            if exc.claimed:
                calls.release_claim(session, exc.call_id)
            log.info("inbound call %s: Ultravox at its concurrency limit; holding (round %d)", exc.call_id,
                     waiting.round)
            outcome.ultravox_seconds = exc.ultravox_seconds
            return _hold(adapter, call, waiting, public_url)
        log.warning("inbound call %s: Ultravox failed (%s); answering %s", exc.call_id, exc.cause, fallback.kind)
        outcome.ultravox_seconds = exc.ultravox_seconds
        outcome.pending_write = exc.record(inbound_answer=fallback.kind)
        return fallback
    if started.duplicate:
        return _answer_of_first_delivery(session, new_call.source, call.carrier_call_id, fallback,
                                         released=_hold(adapter, call, waiting, public_url) if may_wait else None)
    outcome.ultravox_seconds = started.ultravox_seconds
    outcome.pending_write = started.record
    return Answer.stream(started.join_url)


def _refused_for_concurrency(cause: Exception) -> bool:
    """Ultravox's 429: the account's concurrency (or rate) limit; worth trying again soon."""
    return isinstance(cause, UltravoxRateLimited) and cause.status == 429


def _hold(adapter: CarrierAdapter, call: InboundCall, waiting: capacity.Waiting, public_url: str) -> Answer:
    """Hold audio (or a pause), then the carrier asks us again carrying `waiting.next()`:
    in the redirect URL (XML carriers) or in client_state (Telnyx Call Control)."""
    coming_back = waiting.next()
    return Answer.on_hold(Hold(
        redirect_url=capacity.redirect_url(public_url, adapter.name, call.carrier_call_id, coming_back),
        state=capacity.hold_state(adapter.name, call.carrier_call_id, coming_back, call.from_number,
                                  call.to_number),
        round=waiting.round, message=HOLD_MESSAGE if waiting.round == 0 else None,
        audio_url=get_config().hold_audio_url or None, pause_seconds=HOLD_PAUSE_SECONDS))


def store_pending_write(database: Session | Database, outcome: InboundOutcome) -> None:
    """Record the answer on the call row, after it was sent (see InboundOutcome): now
    (a Session), or batched with others by the database's write-behind (a Database)."""
    write, outcome.pending_write = outcome.pending_write, None
    if write is None:
        return
    if isinstance(database, Database):
        database.write_later(write)
    else:
        write(database)


def _answer_of_first_delivery(session: Session, source: CallSource, carrier_call_id: str,
                              fallback: Answer, released: Answer | None = None) -> Answer:
    """A repeated webhook: the first delivery's answer, waiting for it if it is still
    asking Ultravox (concurrent duplicates). Never a second Ultravox call. `released`:
    the answer when the first delivery gave its claim back (it held the caller)."""
    budget = get_config().inbound_ultravox_budget + DUPLICATE_GRACE_SECONDS
    deadline = time.monotonic() + budget
    while True:
        row = session.execute(select(Call.status, Call.join_url, Call.created_at)
                              .where(Call.source == source, Call.carrier_call_id == carrier_call_id)).first()
        # End the read transaction: the next poll must see the first delivery's commit.
        session.rollback()
        if row is not None and call_states.is_terminal(row.status):
            # A replay of a call that is over (a signed webhook can be replayed as it is):
            # it never gets the joinUrl, and no fallback is dialled for it.
            log.info("repeated %s webhook for %s after the call ended", source.value, carrier_call_id)
            return Answer.say(APOLOGY)
        if row is not None and row.join_url:
            log.info("repeated %s webhook for %s: same stream answer", source.value, carrier_call_id)
            return Answer.stream(row.join_url)
        if row is None and released is not None:
            return released  # the first delivery held the caller: so does this one
        if row is None or row.status != call_states.CREATED:
            return fallback  # the first delivery answered with the fallback too
        if time.monotonic() >= deadline or utcnow() - row.created_at > timedelta(seconds=budget):
            log.warning("repeated %s webhook for %s: first delivery still unanswered; answering %s",
                        source.value, carrier_call_id, fallback.kind)
            return fallback
        time.sleep(DUPLICATE_POLL_SECONDS)


def _ultravox_timeout() -> tuple[float, float]:
    """The inbound budget bounds the wait for Ultravox's answer; a new connection (the
    pooled one is normally reused) gets at most the usual connect timeout on top."""
    config = get_config()
    budget = config.inbound_ultravox_budget
    return (min(config.upstream_connect_timeout, budget), budget)


@functools.lru_cache(maxsize=4096)
def _e164(number: str) -> str | None:
    # Cached: a pure function of the string, and the dialled numbers (an agency's own)
    # repeat on every call to them; parsing one costs ~0.1 ms on the webhook's path.
    try:
        return normalize_e164(number)
    except InvalidInput:
        return None


# -- Telnyx Call Control ---------------------------------------------------------------------


def handle_call_control_event(session: Session, request: WebhookRequest, carrier: str = "telnyx") -> None:
    """One Call Control event. Raises SignatureRejected for a bad signature.

    call.initiated (incoming) is an inbound call: answered exactly like the XML carriers,
    then carried out with a REST command (answer with stream_url, transfer, or answer
    and speak). Later events continue a speak-and-hang-up answer and update the call's
    status, a repeated event id being skipped. A database error here propagates (500)
    so that Telnyx redelivers the event; applying it twice is harmless."""
    adapter = get_carriers().call_control(carrier)
    api_base = get_carriers().by_name(carrier).api_base(get_config())
    event = adapter.parse_event(request)
    if event.event_type == "call.initiated":
        if event.direction != "incoming" or not event.call_control_id:
            return  # our own outbound legs: nothing to answer
        outcome = answer_inbound(session, adapter, request)
        if outcome.credentials is None or outcome.agency_id is None:
            # Unknown number (or the database is down before we knew the agency): there
            # is no agency API key to command the call with; Telnyx ends it on timeout.
            log.warning("telnyx call %s cannot be answered: no agency credentials", event.call_control_id)
            return
        # The carrier call id as command id: a repeated call.initiated repeats the same
        # command, which Telnyx ignores, so the caller is never answered twice.
        try:
            adapter.execute(outcome.answer, call_control_id=event.call_control_id,
                            agency_id=str(outcome.agency_id), credentials=outcome.credentials,
                            api_base=api_base, command_id=event.call_control_id)
        finally:
            store_pending_write(session, outcome)
        return

    if event.hold is not None and event.event_type in HOLD_EVENTS:
        _continue_hold(session, adapter, request, event, api_base)
        # A held call has no row of ours yet: nothing to update below.

    if event.say is not None:
        # Such a call may have no row (unassigned number): its state names the agency.
        try:
            agency_id = uuid.UUID(event.say[0])
        except ValueError:
            raise SignatureRejected() from None
        credentials = carrier_webhooks.verified_credentials(session, adapter, request, agency_id)
        session.rollback()  # no transaction held across the REST command
        adapter.continue_say(event, credentials=credentials, api_base=api_base)

    status = adapter.parse_status(request)
    if status is None:
        return
    verified = carrier_webhooks.verified_call(session, adapter, request, status.carrier_call_id)
    if verified is None:
        return
    end_reads_before_writing(session)
    if status.event_id and not first_time(session, adapter.name, status.event_id, verified.agency_id):
        session.rollback()
        log.info("telnyx event %s already processed", status.event_id)
        return
    call_status.apply_event(session, verified.call_id, status)
    session.commit()


# call.answered plays a held caller's hold audio; its end is the next try.
HOLD_EVENTS = ("call.answered", "call.speak.ended", "call.playback.ended")
PLAYBACK_FAILED = ("file_not_found", "failed", "unknown")


def _continue_hold(session: Session, adapter: TelnyxCallControl, request: WebhookRequest,
                   event: CallControlEvent, api_base: str) -> None:
    """A Call Control caller we hold for a free slot (services/capacity.py): the answered
    call hears the hold audio; when it ends, the call is tried again like a new one
    (connect, hold again, or the fallback once the wait is over)."""
    assert event.hold is not None
    parsed = capacity.waiting_from_state(event.hold, adapter.name, event.call_control_id)
    if parsed is None:
        # Only ours can be in it; a state signed with a key since dropped cannot be trusted.
        log.warning("telnyx call %s: hold state not verifiable; leaving the call", event.call_control_id)
        return
    waiting, from_number, to_number = parsed
    if event.payload.get("status") == "call_hangup":
        return  # the audio ended because the caller hung up: nobody to connect
    call = InboundCall(carrier_call_id=event.call_control_id, from_number=from_number, to_number=to_number)
    audio_failed = event.event_type == "call.playback.ended" and event.payload.get("status") in PLAYBACK_FAILED
    if event.event_type == "call.answered" or audio_failed:
        # Answered: play the round the call was held for. Hold audio that cannot be played
        # (a wrong HOLD_AUDIO_URL): this round is spoken instead, rather than trying again
        # at once, which would spin.
        route = find_route(session, adapter.name, to_number)
        if route is None:
            session.rollback()
            return
        credentials = carrier_webhooks.verified_credentials(session, adapter, request, route.agency_id)
        session.rollback()  # no transaction held across the REST command
        # The state carries the next round already: this is the hold it was answered for.
        playing = capacity.Waiting(since=waiting.since, round=max(waiting.round - 1, 0))
        hold = _hold(adapter, call, playing, request.public_url).hold
        assert hold is not None
        if audio_failed:
            log.warning("telnyx call %s: hold audio not played (%s); speaking instead", event.call_control_id,
                        event.payload.get("status"))
            hold = replace(hold, audio_url=None)
        adapter.play_hold(event.call_control_id, hold, credentials=credentials, api_base=api_base)
        return
    outcome = answer_inbound(session, adapter, request, HeldCall(call=call, waiting=waiting))
    if outcome.credentials is None or outcome.agency_id is None:
        log.warning("telnyx call %s: held caller cannot be answered: no agency credentials", event.call_control_id)
        return
    try:
        adapter.execute(outcome.answer, call_control_id=event.call_control_id, agency_id=str(outcome.agency_id),
                        credentials=outcome.credentials, api_base=api_base, command_id=event.call_control_id,
                        answered=True)
    finally:
        store_pending_write(session, outcome)
