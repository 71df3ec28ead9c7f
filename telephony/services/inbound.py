"""Answering a carrier's inbound-call webhook: the caller talks to the agency's agent.

The normal path issues two or three SQL statements, each a transaction of its own run on
the driver's connection (telephony/direct_sql.py: one round trip each, no BEGIN or
COMMIT), and holds no database connection while Ultravox is asked for the call:

1. SELECT the dialled number, its agent, the agency's credit balance, route version and
   credential rows (encrypted): `inbound_routes.find_route`. Skipped when this process
   keeps the number's route from an earlier call (inbound_routes.RouteCache); then the
   claim (2) checks the kept route is still current, and if it is not, or the signature
   does not check out with the kept credentials, the webhook starts over from this read
   with nothing written.
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
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import call_states
from ..carriers.base import Answer, CarrierAdapter, Hold, InboundCall, WebhookRequest
from ..carriers.registry import get_carriers
from ..config import get_config
from ..credentials import ProviderCredentials
from ..db import Database, rollback_quietly
from ..errors import InvalidInput
from ..logging import agency_id_var
from ..models import Call, CallDirection, CallSource, utcnow
from ..ultravox_errors import UltravoxRateLimited
from . import calls, capacity, carrier_webhooks
from .carrier_webhooks import SignatureRejected
from .inbound_routes import Route, RouteAgent, find_route, remember_credentials, route_cache
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

    def start_over(self) -> None:
        """Back to the apology, unverified: a kept route turned out stale (services/inbound_routes.py)."""
        self.answer, self.agency_id, self.credentials = Answer.say(APOLOGY), None, None
        self.ultravox_seconds, self.pending_write = None, None


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
    routes = route_cache()
    kept = routes.get(adapter.name, to_number) if held is None and to_number else None
    if kept is not None:
        remember_credentials(session, kept)
        try:
            _answer_route(session, adapter, request, outcome, held, call, kept, kept=True)
            return
        except calls.RouteChanged:
            # The route may have changed since it was kept (a rotated token, a number moved,
            # no credit left): nothing was written or created; read it again, as without one.
            log.info("inbound %s call to %s: the kept route may be out of date; reading it again", adapter.name,
                     kept.e164)
            routes.forget(adapter.name, kept.e164)
            outcome.start_over()
    route = find_route(session, adapter.name, to_number) if to_number else None
    if route is None:
        session.rollback()
        log.info("inbound %s call to %r: no such number here; not in service", adapter.name, call.to_number)
        outcome.answer = Answer.say(NOT_IN_SERVICE)
        return
    if held is None:
        routes.keep(adapter.name, route)
    _answer_route(session, adapter, request, outcome, held, call, route, kept=False)


def _answer_route(session: Session, adapter: CarrierAdapter, request: WebhookRequest, outcome: InboundOutcome,
                  held: HeldCall | None, call: InboundCall, route: Route, *, kept: bool) -> None:
    """`kept`: the route is the process's (inbound_routes.RouteCache); calls.RouteChanged
    when it may be out of date: the signature does not check out with its credentials
    (they may have been rotated: checked again, and refused, with the fresh ones), or the
    claim finds the agency's route changed."""
    if kept:
        outcome.credentials = carrier_webhooks.credentials_if_signed(session, adapter, request, route.agency_id)
        if outcome.credentials is None:
            raise calls.RouteChanged()
    else:
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
                              waiting or capacity.Waiting(since=int(time.time()), round=0), request.public_url,
                              route_version=route.route_version if kept else None)


def _connect(session: Session, adapter: CarrierAdapter, route: Route, agent: RouteAgent, call: InboundCall,
             outcome: InboundOutcome, waiting: capacity.Waiting, public_url: str, *,
             route_version: int | None) -> Answer:
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
        return hold_answer(adapter, call, waiting, public_url)
    from_number = _e164(call.from_number) or call.from_number[:64]
    new_call = calls.NewCall(
        agency_id=route.agency_id, agent=agent, medium=get_carriers().by_name(adapter.name).medium,
        source=CallSource(adapter.name), direction=CallDirection.inbound, first_speaker="agent",
        from_number=from_number, to_number=route.e164, carrier_call_id=call.carrier_call_id,
        template_context={"caller_number": from_number, "called_number": route.e164},
        recording_enabled=route.recording_enabled,  # None: the agent's setting
        credit_balance=route.credit_balance, route_version=route_version)
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
            return hold_answer(adapter, call, waiting, public_url)
        log.warning("inbound call %s: Ultravox failed (%s); answering %s", exc.call_id, exc.cause, fallback.kind)
        outcome.ultravox_seconds = exc.ultravox_seconds
        outcome.pending_write = exc.record(inbound_answer=fallback.kind)
        return fallback
    if started.duplicate:
        return _answer_of_first_delivery(session, new_call.source, call.carrier_call_id, fallback,
                                         released=hold_answer(adapter, call, waiting, public_url) if may_wait else None)
    outcome.ultravox_seconds = started.ultravox_seconds
    outcome.pending_write = started.record
    return Answer.stream(started.join_url)


def _refused_for_concurrency(cause: Exception) -> bool:
    """Ultravox's 429: the account's concurrency (or rate) limit; worth trying again soon."""
    return isinstance(cause, UltravoxRateLimited) and cause.status == 429


def hold_answer(adapter: CarrierAdapter, call: InboundCall, waiting: capacity.Waiting, public_url: str) -> Answer:
    """Hold audio (or a pause), then the carrier asks us again carrying `waiting.next()`:
    in the redirect URL (XML carriers) or in client_state (Telnyx Call Control)."""
    coming_back = waiting.next()
    return Answer.on_hold(Hold(
        redirect_url=capacity.redirect_url(public_url, adapter.name, call.carrier_call_id, coming_back),
        state=capacity.hold_state(adapter.name, call.carrier_call_id, coming_back, call.from_number,
                                  call.to_number),
        round=waiting.round, message=HOLD_MESSAGE if waiting.round == 0 else None,
        audio_url=get_config().hold_audio_url or None, pause_seconds=HOLD_PAUSE_SECONDS))


def store_pending_write(database: Database, outcome: InboundOutcome) -> None:
    """Record the answer on the call row, after it was sent (see InboundOutcome): handed
    to the database's write-behind (batched with others on PostgreSQL)."""
    write, outcome.pending_write = outcome.pending_write, None
    if write is not None:
        database.write_later(write)


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
