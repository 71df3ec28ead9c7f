"""Outbound calls: create the Ultravox call, then have the carrier dial the callee.

The one path for single calls (POST /api/v1/calls) and campaign dials:

1. `prepare_outbound` resolves the agent (by Ultravox agent id), the caller number
   (one of the agency's; default: the number assigned to the agent, which decides the
   carrier) and normalises the callee to E.164.
2. `calls.start_call` (the path every call takes) creates the Ultravox call (user
   speaks first; `joinTimeout` long enough to cover ringing) and records our `calls` row.
3. `place_carrier_call` asks the carrier with its official SDK (never auto-retrying,
   see carriers/sdk.py) to dial and connect the callee to the joinUrl. Every callback
   URL names our call id, so a callback can be matched to the call even when our
   process died before it stored the carrier's call id (see api/outbound.py).

Carrier failures are classified, because a create that may have gone through must
never be repeated automatically:
  CarrierRejected   4xx other than 429: the carrier refused the request (e.g. invalid
                    number); no call exists.
  CarrierRateLimited 429: documented as never processed; safe to try again later.
  CarrierUnavailable 5xx, timeout, connection error: the call MAY exist.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .. import answering_machine as amd
from .. import call_states
from ..carriers import sdk
from ..carriers.base import CarrierDialer, MachineMessage, OutboundDial
from ..carriers.registry import get_carriers
from ..config import get_config
from ..credentials import get_credentials
from ..errors import DomainError, InvalidInput, UpstreamBusy, UpstreamFailed
from ..models import AgentMapping, Call, CallDirection, CallSource, PhoneNumber, utcnow
from ..ultravox_errors import UltravoxError, UltravoxRateLimited
from . import agents, calls
from .calls import StartedCall, ultravox_client_for
from .do_not_call import is_on_list
from .phone_numbers import normalize_e164

log = logging.getLogger(__name__)

JOIN_TIMEOUT = "90s"  # ringing counts against it: the stream connects only after answer
RING_TIMEOUT_SECONDS = 45


class CarrierError(DomainError):
    """Base of carrier failures; `reason` is the carrier's own message."""

    def __init__(self, carrier: str, message: str, *, carrier_status: int | None = None):
        self.carrier = carrier
        self.carrier_status = carrier_status
        super().__init__(f"{carrier} refused the call: {message}" if self.status < 500
                         else f"{carrier} error: {message}")


class CarrierRejected(CarrierError):
    status = 422
    code = "carrier_rejected"


class CarrierRateLimited(CarrierError):
    status = 429
    code = "carrier_rate_limited"
    retry_after = 1  # carriers count calls per second


class CarrierUnavailable(CarrierError):
    status = 502
    code = "carrier_error"


class CarrierNotConfigured(DomainError):
    status = 400
    code = "carrier_credentials_missing"


class OnDoNotCallList(DomainError):
    status = 422
    code = "do_not_call"


class UltravoxRefused(UpstreamFailed):
    code = "ultravox_error"


# A 429/503 from Ultravox without a Retry-After: how long the client is told to wait.
DEFAULT_ULTRAVOX_RETRY_SECONDS = 5


@dataclass(frozen=True)
class OutboundTarget:
    agent: AgentMapping
    from_number: str
    carrier: str
    to: str


def caller_number(session: Session, agency_id: uuid.UUID, agent: AgentMapping,
                  from_number: str | None) -> PhoneNumber:
    """`from_number` if it is one of the agency's numbers, else the agent's number."""
    if from_number:
        e164 = normalize_e164(from_number, field="from")
        number = session.scalar(select(PhoneNumber).where(PhoneNumber.agency_id == agency_id,
                                                          PhoneNumber.e164 == e164))
        if number is None:
            raise InvalidInput(f"{e164} is not one of the agency's phone numbers", field="from")
        return number
    number = session.scalar(select(PhoneNumber).where(PhoneNumber.agency_id == agency_id,
                                                      PhoneNumber.agent_id == agent.id)
                            .order_by(PhoneNumber.created_at, PhoneNumber.id).limit(1))
    if number is None:
        raise InvalidInput("no phone number is assigned to this agent; pass from", field="from")
    return number


def prepare_outbound(session: Session, agency_id: uuid.UUID, *, agent_id: str, to: str,
                     from_number: str | None) -> OutboundTarget:
    to_e164 = normalize_e164(to, field="to")
    agent = agents.find_agent(session, agency_id, agent_id)
    number = caller_number(session, agency_id, agent, from_number)
    if number.e164 == to_e164:
        raise InvalidInput("to and from must differ", field="to")
    return OutboundTarget(agent=agent, from_number=number.e164, carrier=number.carrier.value, to=to_e164)


def validate_machine_policy(on_machine: str, machine_message: dict[str, Any] | None, *, field: str) -> None:
    """An answering-machine policy that can be carried out: leave_message needs a message."""
    if on_machine not in amd.POLICIES:
        raise InvalidInput(f"on_machine must be one of {', '.join(amd.POLICIES)}", field=f"{field}.on_machine")
    if on_machine == amd.LEAVE_MESSAGE and MachineMessage.from_dict(machine_message) is None:
        raise InvalidInput("leave_message needs a message: {\"text\": ...} or {\"audio_url\": ...}",
                           field=f"{field}.message")


# -- carrier accounts ------------------------------------------------------------------


def _dialer(carrier: str) -> CarrierDialer:
    found = get_carriers().dialer(carrier)
    if found is None:
        raise CarrierRejected(carrier, "unsupported carrier")
    return found


def carrier_credentials(session: Session, agency_id: uuid.UUID, carrier: str) -> Mapping[str, str]:
    credentials = get_credentials().get(session, agency_id, carrier)
    missing = [name for name in get_carriers().by_name(carrier).required_credentials if not credentials.get(name)]
    if missing:
        raise CarrierNotConfigured(f"{carrier} credentials missing: {', '.join(missing)}")
    return credentials


def carrier_account_key(carrier: str, credentials: Mapping[str, str]) -> str:
    """Identifies the carrier account (the unit carriers count calls per second by)."""
    return f"cps:{carrier}:{_dialer(carrier).account(credentials)}"


# -- placing the carrier call ----------------------------------------------------------


def callback_url(carrier: str, kind: str, call_id: uuid.UUID) -> str:
    return f"{get_config().public_base_url}/webhooks/outbound/{carrier}/{kind}/{call_id}"


def carrier_client(carrier: str, credentials: Mapping[str, str], *, timeout: float | None = None) -> Any:
    """The official SDK client for the agency's carrier account (kept per account, so its
    connection is reused). Raises CarrierRejected for an unsupported carrier. ``timeout``:
    seconds per request, when the caller has a tighter budget than UPSTREAM_READ_TIMEOUT."""
    carrier_dialer = _dialer(carrier)
    config = get_config()
    api_base = get_carriers().by_name(carrier).api_base(config)
    timeout = config.upstream_read_timeout if timeout is None else timeout
    return sdk.cached_client(carrier, (*carrier_dialer.secrets(credentials), api_base, str(timeout)),
                             lambda: carrier_dialer.new_client(credentials, api_base=api_base, timeout=timeout))


def place_carrier_call(carrier: str, credentials: Mapping[str, str], *, to: str, from_number: str,
                       join_url: str, call_id: uuid.UUID, command_id: str, client: Any = None) -> str:
    """Ask the carrier to dial; returns the carrier's call id. Raises CarrierRejected,
    CarrierRateLimited or CarrierUnavailable. Sent exactly once (no SDK retries).
    `client`: from carrier_client, built ahead (the campaign dispatcher does so before it
    waits for its calls-per-second slot, leaving only the request itself after it)."""
    carrier_dialer = _dialer(carrier)
    dial = OutboundDial(to=to, from_number=from_number, join_url=join_url, command_id=command_id,
                        ring_timeout=RING_TIMEOUT_SECONDS,
                        callback_url=lambda kind: callback_url(carrier, kind, call_id))
    try:
        client = client if client is not None else carrier_client(carrier, credentials)
        return carrier_dialer.place_call(client, credentials, dial)
    except Exception as exc:  # classified below; anything unknown counts as "may have happened"
        raise classify_carrier_error(carrier, exc) from exc


def classify_carrier_error(carrier: str, exc: Exception) -> CarrierError:
    status, message = _status_and_message(carrier, exc)
    if status == 429:
        return CarrierRateLimited(carrier, message, carrier_status=status)
    if status is not None and 400 <= status < 500:
        return CarrierRejected(carrier, message, carrier_status=status)
    return CarrierUnavailable(carrier, message, carrier_status=status)


def _status_and_message(carrier: str, exc: Exception) -> tuple[int | None, str]:
    carrier_dialer = get_carriers().dialer(carrier)
    described = carrier_dialer.error_status(exc) if carrier_dialer is not None else None
    if described is not None:
        return described
    if isinstance(exc, requests.RequestException):  # the Twilio and Plivo SDKs send with requests
        return None, f"{exc.__class__.__name__}: carrier unreachable or timed out"
    return None, f"{exc.__class__.__name__}"


# -- the whole outbound call -----------------------------------------------------------


def start_ultravox_call(session: Session, agency_id: uuid.UUID, target: OutboundTarget, *,
                        template_context: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                        stored_metadata: dict[str, Any] | None = None, on_machine: str | None = None,
                        machine_message: dict[str, Any] | None = None) -> StartedCall:
    """The Ultravox half (user speaks first); the call row is recorded as `created`, with
    its answering-machine policy (services/answering_machine.py)."""
    started = calls.start_call(session, calls.NewCall(
        agency_id=agency_id, agent=target.agent, medium=get_carriers().by_name(target.carrier).medium,
        source=CallSource(target.carrier), direction=CallDirection.outbound, first_speaker="user",
        from_number=target.from_number, to_number=target.to, template_context=template_context, metadata=metadata,
        stored_metadata=stored_metadata, extra_body={"joinTimeout": JOIN_TIMEOUT},
        on_machine=on_machine, machine_message=machine_message))
    if started.call_id is not None and target.carrier == "plivo":
        # Plivo fetches the answer_url (possibly more than once): it is answered from this.
        session.execute(update(Call).where(Call.id == started.call_id).values(join_url=started.join_url)
                        .execution_options(synchronize_session=False))
        session.commit()
    return started


def record_carrier_call(session: Session, call_id: uuid.UUID, carrier_call_id: str) -> None:
    session.execute(update(Call).where(Call.id == call_id, Call.carrier_call_id.is_(None))
                    .values(carrier_call_id=carrier_call_id)
                    .execution_options(synchronize_session=False))


def record_call_unknown(session: Session, call_id: uuid.UUID, reason: str) -> None:
    """The carrier may have placed the call (5xx or timeout): "unknown", which its later
    callbacks still move on (call_states.UNKNOWN), never a terminal "failed"."""
    session.execute(update(Call).where(Call.id == call_id, Call.status.in_((call_states.CREATED, call_states.QUEUED)))
                    .values(status=call_states.UNKNOWN, end_reason=reason[:64])
                    .execution_options(synchronize_session=False))


def record_call_failed(session: Session, call_id: uuid.UUID, reason: str) -> None:
    session.execute(update(Call).where(Call.id == call_id, Call.status.in_((call_states.CREATED, call_states.QUEUED)))
                    .values(status=call_states.FAILED, end_reason=reason[:64], ended_at=utcnow(), join_url=None)
                    .execution_options(synchronize_session=False))


def hang_up_quietly(session: Session, agency_id: uuid.UUID, ultravox_call_id: str) -> None:
    """End an Ultravox call nobody will ever join (best effort: it times out anyway)."""
    try:
        client = ultravox_client_for(session, agency_id)
        session.rollback()
        client.hang_up(ultravox_call_id)
    except Exception as exc:  # the join timeout ends it regardless
        log.info("could not hang up Ultravox call %s (%s); it ends at its join timeout",
                 ultravox_call_id, exc.__class__.__name__)


@dataclass
class OutboundResult:
    call_id: uuid.UUID
    status: str
    carrier_call_id: str | None
    ultravox_call_id: str


def make_call(session: Session, agency_id: uuid.UUID, *, agent_id: str, to: str, from_number: str | None,
              template_context: dict[str, Any] | None, metadata: dict[str, Any] | None,
              on_machine: str = amd.SINGLE_CALL_DEFAULT, machine_message: dict[str, Any] | None = None,
              ) -> OutboundResult:
    """A single outbound call. Raises DomainError subclasses: validation, DNC, Ultravox
    refusing (nothing recorded) and carrier errors (recorded on the call first).
    `on_machine`: what the call does if a machine answers (telephony.answering_machine);
    leave_message needs `machine_message`."""
    validate_machine_policy(on_machine, machine_message, field="answering_machine")
    target = prepare_outbound(session, agency_id, agent_id=agent_id, to=to, from_number=from_number)
    if is_on_list(session, agency_id, target.to):
        raise OnDoNotCallList(f"{target.to} is on the agency's do-not-call list", field="to")
    credentials = carrier_credentials(session, agency_id, target.carrier)
    try:
        started = start_ultravox_call(session, agency_id, target, template_context=template_context,
                                      metadata=metadata, stored_metadata={"outbound": "single"},
                                      on_machine=on_machine, machine_message=machine_message)
    except UltravoxRateLimited as exc:
        retry = int(exc.retry_after) if exc.retry_after else DEFAULT_ULTRAVOX_RETRY_SECONDS
        raise UpstreamBusy("Ultravox is at its rate or concurrency limit; retry later", retry_after=retry) from None
    except UltravoxError as exc:
        raise UltravoxRefused(f"Ultravox refused the call: {exc.detail}") from None
    if started.call_id is None:
        hang_up_quietly(session, agency_id, started.ultravox_call_id)
        raise CarrierUnavailable(target.carrier, "the call could not be recorded; nothing was dialled")
    try:
        carrier_call_id = place_carrier_call(target.carrier, credentials, to=target.to,
                                             from_number=target.from_number, join_url=started.join_url,
                                             call_id=started.call_id, command_id=str(started.call_id))
    except CarrierError as exc:
        # 4xx / 429: no carrier call exists, so the Ultravox call is hung up now.
        # 5xx / timeout: the call may exist; the Ultravox call is left to connect or to
        # end at its join timeout, and the carrier's later callbacks record the truth.
        if exc.status < 500:
            record_call_failed(session, started.call_id, "carrier_rejected")
        else:
            record_call_unknown(session, started.call_id, "carrier_error")
        session.commit()
        if exc.status < 500:
            hang_up_quietly(session, agency_id, started.ultravox_call_id)
        raise
    record_carrier_call(session, started.call_id, carrier_call_id)
    session.commit()
    status = session.scalar(select(Call.status).where(Call.id == started.call_id)) or "created"
    session.commit()
    return OutboundResult(call_id=started.call_id, status=status, carrier_call_id=carrier_call_id,
                          ultravox_call_id=started.ultravox_call_id)
