"""Starting an Ultravox call for an agent: the one path every call takes.

Dashboard test calls, public web calls, server WebSocket calls, single outbound calls,
campaign dials and inbound carrier webhooks all describe their call as a `NewCall` and
hand it to `start_call`, which finds the agency's Ultravox key, builds the Ultravox
body and metadata, creates the call and records it. Two orders:

- create first (every source but inbound): create the Ultravox call, then INSERT the
  row. Ultravox errors propagate with nothing written. A failed insert after a
  successful create is the seeds' "partial success": the StartedCall has call_id=None
  and a warning.
- claim first (inbound, `claim_first=True`): INSERT the row ON CONFLICT (source,
  carrier_call_id) DO NOTHING and commit, then create the Ultravox call. The claim is
  what makes a repeated carrier webhook lose (`StartedCall.duplicate`) instead of
  creating a second Ultravox call. What Ultravox answered is written afterwards by
  `StartedCall.record` (or `CallNotStarted.record`), which the caller runs once its
  answer is on the way: the caller on the phone does not wait for that write.

Credit: an agency whose credit balance is not above zero starts no call of any kind
(InsufficientCredits, 403 `insufficient_credits`; claim first: CallNotStarted, and the
inbound caller gets the number's fallback or an apology). The balance is what Ultravox's
call.billed events leave after deducting each call's billed seconds.

The metadata sent to Ultravox names our call id, agency, agent, source and direction
(and the numbers and carrier call id when there are any), so a call whose row could not
be written can be rebuilt from Ultravox's own webhooks later: nothing is lost.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, cast

from sqlalchemy import Table, bindparam, case, delete, literal, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .. import call_states, direct_sql
from ..config import Config, get_config
from ..credentials import CredentialStore, get_credentials
from ..db import end_read, rollback_quietly
from ..direct_sql import DirectStatement
from ..errors import DomainError, Forbidden
from ..logging import call_id_var
from ..models import Agency, Call, CallDirection, CallSource, utcnow
from ..ultravox import UltravoxClient
from ..ultravox_errors import UltravoxError, UltravoxServerError
from . import claims, transfer_tool

log = logging.getLogger(__name__)

METADATA_PREFIX = "telephony."
PARTIAL_SUCCESS_WARNING = "Call created but failed to save to database"
MAX_METADATA_ENTRIES = 20
MAX_METADATA_VALUE = 500


class InsufficientCredits(Forbidden):
    code = "insufficient_credits"

    def __init__(self) -> None:
        super().__init__("Insufficient credits")


class MissingUltravoxKey(DomainError):
    status = 400
    code = "ultravox_key_missing"

    def __init__(self) -> None:
        super().__init__("Ultravox API key not configured for the agency")


class InvalidUltravoxKey(DomainError):
    status = 400
    code = "ultravox_key_invalid"

    def __init__(self) -> None:
        super().__init__("The agency's Ultravox API key is malformed (it contains spaces or non-ASCII characters)")


def ultravox_client_for(session: Session, agency_id: uuid.UUID, *, credentials: CredentialStore | None = None,
                        config: Config | None = None) -> UltravoxClient:
    """The agency's Ultravox client; raises MissingUltravoxKey if none is stored
    and InvalidUltravoxKey if the stored one could never be sent as a header.

    The credential store and config are the current app's unless given (worker jobs
    hand theirs in and need no app context)."""
    credentials = credentials or get_credentials()
    api_key = credentials.get(session, agency_id, "ultravox").get("api_key")
    if not api_key:
        raise MissingUltravoxKey()
    try:
        return UltravoxClient.from_config(api_key, config or get_config())
    except ValueError:  # the client refuses such a key without repeating it; so do we
        raise InvalidUltravoxKey() from None


class CallAgent(Protocol):
    """What starting a call reads of its agent: an AgentMapping row, or the plain values
    the inbound webhook read with the dialled number (services/inbound.py RouteAgent)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def ultravox_agent_id(self) -> str: ...

    @property
    def recording_enabled(self) -> bool: ...

    @property
    def transfer_targets(self) -> list[dict[str, Any]]: ...


def call_metadata(*, call_id: uuid.UUID, agency_id: uuid.UUID, agent: CallAgent, source: CallSource,
                  direction: CallDirection, extra: dict[str, Any] | None = None, from_number: str | None = None,
                  to_number: str | None = None, carrier_call_id: str | None = None) -> dict[str, str]:
    """Ultravox metadata: string values only; ours under the `telephony.` prefix
    (Ultravox reserves `ultravox.`), the caller's own keys kept as given. The numbers
    and the carrier call id are there when the call has them: the webhook ingest
    rebuilds an unrecorded call from these."""
    metadata = {str(k): str(v) for k, v in (extra or {}).items() if not str(k).startswith(METADATA_PREFIX)}
    metadata.update({
        "telephony.call_id": str(call_id),
        "telephony.agency_id": str(agency_id),
        "telephony.agent_id": str(agent.id),
        "telephony.source": source.value,
        "telephony.direction": direction.value,
    })
    for key, value in (("carrier_call_id", carrier_call_id), ("from", from_number), ("to", to_number)):
        if value:
            metadata[METADATA_PREFIX + key] = value
    return metadata


def agent_call_body(*, medium: dict, first_speaker: str, metadata: dict[str, str],
                    template_context: dict[str, Any] | None = None, recording_enabled: bool | None = None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Body of POST /api/agents/{id}/calls."""
    body: dict[str, Any] = {
        "medium": medium,
        "firstSpeakerSettings": {"agent": {}} if first_speaker == "agent" else {"user": {}},
        "metadata": metadata,
    }
    if template_context:
        body["templateContext"] = template_context
    if recording_enabled is not None:
        body["recordingEnabled"] = recording_enabled
    body.update(extra or {})
    return body


@dataclass(frozen=True)
class NewCall:
    """One call to start: who, which agent, on which medium, from where."""

    agency_id: uuid.UUID
    agent: CallAgent
    medium: dict[str, Any]  # the Ultravox medium, e.g. {"webRtc": {}} or {"twilio": {}}
    source: CallSource
    direction: CallDirection
    first_speaker: str = "agent"
    from_number: str | None = None
    to_number: str | None = None
    carrier_call_id: str | None = None  # inbound: the carrier's id, the key of the claim
    template_context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None  # the caller's own Ultravox metadata
    stored_metadata: dict[str, Any] | None = None  # kept on our row (calls.metadata); create first only
    recording_enabled: bool | None = None  # None: the agent's setting
    extra_body: dict[str, Any] | None = None  # further Ultravox call fields (joinTimeout, ...)
    credit_balance: int | None = None  # the agency's, when the caller read it already; else read here
    # Claim first, from a route kept by the web process (services/inbound_routes.py): claim
    # only while the agency's route_version is still this one, it has credit and no
    # concurrency limit (the claim checks all three, in the same statement); else
    # RouteChanged, with nothing written or created.
    route_version: int | None = None
    on_machine: str | None = None  # outbound: what to do if a machine answers (telephony.answering_machine)
    machine_message: dict[str, Any] | None = None  # outbound: the message to leave ({"text"} or {"audio_url"})
    # Continue the conversation of this Ultravox call (a direct call with priorCallId, which
    # reuses its settings and history; services/transfer_outcomes.py brings a caller back this way).
    prior_ultravox_call_id: str | None = None


@dataclass
class StartedCall:
    call_id: uuid.UUID | None  # None when the Ultravox call exists but our row could not be written
    ultravox_call_id: str
    join_url: str
    created_at: datetime
    warning: str | None = None
    ultravox_call: dict[str, Any] = field(default_factory=dict, repr=False)
    ultravox_seconds: float | None = None  # time spent waiting on Ultravox (Server-Timing)
    # claim_first only. duplicate: another delivery of the same carrier call holds the
    # claim (nothing was created). record: the write that stores the answer on the row.
    duplicate: bool = False
    record: CallRecord | None = field(default=None, repr=False)


class RouteChanged(Exception):
    """A route kept by the process may be out of date. Raised by the claim with
    `NewCall.route_version` when it inserted nothing: the agency's route changed since it
    was read, or it has no credit or a concurrency limit now, or another delivery holds
    the claim (one statement cannot tell which). Nothing was written and no Ultravox call
    created: the caller reads the route again and starts over (services/inbound.py)."""


class CallNotStarted(Exception):
    """claim_first only: Ultravox did not create the call (its error, or no usable key
    for the agency). `record` notes what the caller was answered instead on the claimed
    row (None when the row could not be claimed)."""

    def __init__(self, cause: Exception, *, call_id: uuid.UUID, claimed: bool,
                 ultravox_seconds: float | None) -> None:
        self.cause = cause
        self.call_id = call_id
        self.claimed = claimed
        self.ultravox_seconds = ultravox_seconds
        super().__init__(f"call {call_id} not started: {type(cause).__name__}")

    def record(self, **metadata: str) -> CallRecord | None:
        if not self.claimed:
            return None
        return CallRecord(self.call_id, _RECORD_FAILURE, {
            "call_id": self.call_id, "metadata": {**metadata, "start_error": type(self.cause).__name__}})


def start_call(session: Session, new: NewCall, *, claim_first: bool = False,
               timeout: float | tuple[float, float] | None = None) -> StartedCall:
    """Create the agent's Ultravox call and record it (see the module docstring for the
    two orders). Create first: raises InsufficientCredits, MissingUltravoxKey /
    InvalidUltravoxKey and UltravoxError subclasses with nothing written. Claim first:
    raises CallNotStarted for any of them. The session's read transaction is ended before Ultravox is asked: no
    connection or lock is held across the upstream call."""
    call_id = uuid.uuid4()
    call_id_var.set(str(call_id))
    agent = new.agent
    agent_id, ultravox_agent_id = agent.id, agent.ultravox_agent_id
    recording = agent.recording_enabled if new.recording_enabled is None else new.recording_enabled
    body = agent_call_body(
        medium=new.medium, first_speaker=new.first_speaker, template_context=new.template_context,
        recording_enabled=recording, extra=new.extra_body,
        metadata=call_metadata(call_id=call_id, agency_id=new.agency_id, agent=agent, source=new.source,
                               direction=new.direction, extra=new.metadata, from_number=new.from_number,
                               to_number=new.to_number, carrier_call_id=new.carrier_call_id))
    tool = _transfer_tool(new, call_id)
    if tool is not None and new.prior_ultravox_call_id:  # a direct call selects its tools
        body.setdefault("selectedTools", []).append(tool)
    elif tool is not None:  # an agent call adds to the agent's own
        body.setdefault("toolOverrides", {}).setdefault("add", []).append(tool)
    has_credit = _has_credit(session, new)
    if not claim_first:
        if not has_credit:
            session.rollback()
            raise InsufficientCredits()
        client = ultravox_client_for(session, new.agency_id)
        session.rollback()
        started = _create(client, ultravox_agent_id, body, call_id, timeout, prior=new.prior_ultravox_call_id)
        _insert(session, new, agent_id, started)
        return started

    agency_client: UltravoxClient | None = None
    key_problem: DomainError | None = None
    try:
        agency_client = ultravox_client_for(session, new.agency_id)
    except (MissingUltravoxKey, InvalidUltravoxKey) as exc:
        # Claimed all the same: a repeated webhook must find the claim, not try again.
        log.error("call %s: %s", call_id, exc.message)
        key_problem = exc
    # No read transaction stays open across the wait on Ultravox (the claim and the
    # record below are transactions of their own).
    end_read(session)
    claim = _claim(session, new, agent_id, call_id)
    if claim == "route_changed":
        raise RouteChanged()
    if claim == "duplicate":
        return StartedCall(call_id=None, ultravox_call_id="", join_url="", created_at=utcnow(), duplicate=True)
    claimed = claim == "claimed"
    if not has_credit:
        raise CallNotStarted(InsufficientCredits(), call_id=call_id, claimed=claimed, ultravox_seconds=None)
    if agency_client is None:
        raise CallNotStarted(key_problem or MissingUltravoxKey(), call_id=call_id, claimed=claimed,
                             ultravox_seconds=None)
    began = time.perf_counter()
    try:
        started = _create(agency_client, ultravox_agent_id, body, call_id, timeout)
    except UltravoxError as exc:
        raise CallNotStarted(exc, call_id=call_id, claimed=claimed,
                             ultravox_seconds=time.perf_counter() - began) from exc
    started.ultravox_seconds = time.perf_counter() - began
    if claimed:
        started.record = CallRecord(call_id, _RECORD_STARTED, {
            "call_id": call_id, "ultravox_call_id": started.ultravox_call_id, "join_url": started.join_url})
    else:
        started.call_id, started.warning = None, PARTIAL_SUCCESS_WARNING
        log.error("call %s connected as Ultravox call %s but not recorded; the Ultravox webhook ingest repairs "
                  "it from the call's metadata", call_id, started.ultravox_call_id)
    return started


def release_claim(session: Session, call_id: uuid.UUID) -> None:
    """Claim first: give back the claim of a call Ultravox refused, so that a later
    delivery for the same carrier call (a held inbound caller's retry, services/capacity.py)
    can claim it again. Only a row still as claimed (created, no Ultravox call) goes; a
    database error is logged (the retry then finds the claim and answers the fallback)."""
    try:
        session.execute(delete(_calls).where(_calls.c.id == call_id, _calls.c.status == call_states.CREATED,
                                             _calls.c.ultravox_call_id.is_(None)))
        session.commit()
    except SQLAlchemyError:
        log.exception("call %s: could not give back its claim", call_id)
        rollback_quietly(session)


def _transfer_tool(new: NewCall, call_id: uuid.UUID) -> dict[str, Any] | None:
    """The call's transferCall tool: carrier calls of agents with transfer targets only
    (a web or WebSocket call has no carrier leg to redirect)."""
    targets = new.agent.transfer_targets
    if not targets or not transfer_tool.is_carrier_medium(new.medium):
        return None
    return transfer_tool.transfer_tool(call_id=call_id, targets=targets, store=get_credentials(),
                                       public_base_url=get_config().public_base_url)


def _has_credit(session: Session, new: NewCall) -> bool:
    if new.route_version is not None:
        return True  # the claim itself inserts only while the agency has credit
    balance = new.credit_balance
    if balance is None:
        balance = session.scalar(select(Agency.credit_balance).where(Agency.id == new.agency_id))
    return balance is not None and balance > 0


def _create(client: UltravoxClient, ultravox_agent_id: str, body: dict[str, Any], call_id: uuid.UUID,
            timeout: float | tuple[float, float] | None, *, prior: str | None = None) -> StartedCall:
    if prior:
        created = client.create_call(body, prior_call_id=prior, timeout=timeout)
    else:
        created = client.create_agent_call(ultravox_agent_id, body, timeout=timeout)
    ultravox_call_id, join_url = created.get("callId"), created.get("joinUrl")
    if not ultravox_call_id or not join_url:
        raise UltravoxServerError("create_agent_call", "the call has no joinUrl or callId")
    return StartedCall(call_id=call_id, ultravox_call_id=str(ultravox_call_id), join_url=str(join_url),
                       created_at=_parse_time(created.get("created")) or utcnow(), ultravox_call=created)


def _insert(session: Session, new: NewCall, agent_id: uuid.UUID, started: StartedCall) -> None:
    """Create first: the row, once Ultravox has the call (or the seeds' partial success)."""
    try:
        session.add(Call(id=started.call_id, agency_id=new.agency_id, agent_id=agent_id,
                         ultravox_call_id=started.ultravox_call_id, source=new.source, direction=new.direction,
                         from_number=new.from_number, to_number=new.to_number, status=call_states.CREATED,
                         metadata_=new.stored_metadata or {}, created_at=started.created_at,
                         on_machine=new.on_machine, machine_message=new.machine_message))
        session.commit()
    except SQLAlchemyError:
        rollback_quietly(session)  # the database may be gone: the caller still gets the call
        log.exception("call %s created in Ultravox as %s but not saved; the webhook ingest will repair it",
                      started.call_id, started.ultravox_call_id)
        started.call_id = None
        started.warning = PARTIAL_SUCCESS_WARNING


def _claim(session: Session, new: NewCall, agent_id: uuid.UUID,
           call_id: uuid.UUID) -> Literal["claimed", "duplicate", "route_changed", "unrecorded"]:
    """Claim first: the row, keyed by (source, carrier_call_id), committed (one
    INSERT ... ON CONFLICT DO NOTHING in autocommit: it inserted, or the key was taken).
    With a route_version, an INSERT ... SELECT that also checks the agency's route is
    unchanged: no row then is "route_changed" (the caller starts over)."""
    params = {"id": call_id, "agency_id": new.agency_id, "agent_id": agent_id, "source": new.source,
              "direction": new.direction, "from_number": new.from_number, "to_number": new.to_number,
              "carrier_call_id": new.carrier_call_id, "status": call_states.CREATED}
    try:
        claimed = claims.insert_claim(session, params, new.route_version)
    except SQLAlchemyError:
        # The caller is connected all the same: losing the row is repairable, losing the
        # call is not. Idempotency is lost for this one request only.
        log.exception("call %s could not be claimed; starting it anyway", call_id)
        return "unrecorded"
    if claimed:
        return "claimed"
    return "duplicate" if new.route_version is None else "route_changed"


@dataclass(frozen=True)
class CallRecord:
    """Claim first: the write that stores the outcome on the claimed row (one of the
    _RECORD_* statements). Call it with a Session or Engine to write it now, or hand it to
    `Database.write_later` (telephony/write_behind.py). Never raises for a database error:
    the row is repaired from the Ultravox call's metadata."""

    call_id: uuid.UUID
    statement: DirectStatement
    params: dict[str, Any]

    def __call__(self, database: Session | Engine) -> None:
        try:
            direct_sql.run(database, self.statement, self.params)
        except SQLAlchemyError:
            log.exception("call %s: could not store the outcome; the Ultravox webhook ingest repairs it "
                          "from the call's metadata", self.call_id)


_calls = cast(Table, Call.__table__)
# A status callback may already have moved the call on (a caller who hung up while we
# waited on Ultravox): only a call still "created" becomes "ringing".
_RINGING = case((_calls.c.status == call_states.CREATED, call_states.RINGING), else_=_calls.c.status)
_RECORD_BASE = update(_calls).where(_calls.c.id == bindparam("call_id")).values(status=_RINGING)


def _started_values(ultravox_call_id: Any, join_url: Any) -> dict[str, Any]:
    # A call that ended meanwhile (its terminal callback cleared the joinUrl) keeps none.
    # (The terminal statuses as plain bound values: an IN list SQLAlchemy expands per
    # execution cannot be compiled once.)
    return {"status": _RINGING, "ultravox_call_id": ultravox_call_id,
            "join_url": case((_calls.c.status.in_([literal(s) for s in sorted(call_states.TERMINAL)]), None),
                             else_=join_url)}


# The write-behind's batch of these (telephony/write_behind.py) is one UPDATE ... FROM
# unnest(arrays), the same for any number of rows: prepared once, one round trip. Its
# commit does not wait for the disk: a record lost to a crash of the database server is
# repaired from the Ultravox call's metadata, as any lost record.
_STARTED_ROWS = direct_sql.unnest_rows("started", [("call_id", _calls.c.id.type)] + [
    (name, _calls.c[name].type) for name in ("ultravox_call_id", "join_url", "updated_at")])
_RECORD_STARTED = DirectStatement(
    _RECORD_BASE.values(_started_values(bindparam("ultravox_call_id", type_=_calls.c.ultravox_call_id.type),
                                        bindparam("join_url", type_=_calls.c.join_url.type))),
    wait_for_disk=False, prepared=True,
    many=DirectStatement(update(_calls).where(_calls.c.id == _STARTED_ROWS.c.call_id).values(
        {**_started_values(_STARTED_ROWS.c.ultravox_call_id, _STARTED_ROWS.c.join_url),
         "updated_at": _STARTED_ROWS.c.updated_at}), wait_for_disk=False, prepared=True))
_RECORD_FAILURE = DirectStatement(_RECORD_BASE.values(metadata=bindparam("metadata")))


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None
