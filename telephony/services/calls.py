"""Starting an Ultravox call for an agent: the one path every entry point uses.

Dashboard test calls, public web calls, server WebSocket calls, outbound dials
and inbound carrier webhooks all come down to: find the agency's Ultravox key,
create a call for the agent on a medium, record it, hand back the joinUrl.

The metadata sent to Ultravox names our call id, agency, agent, source and
direction, so a call whose database insert failed (the seeds' "partial
success") can be recreated from Ultravox's own webhooks later: nothing is lost.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..config import Config
from ..context import get_config, get_credentials
from ..credentials import CredentialStore
from ..errors import DomainError
from ..logging import call_id_var
from ..models import AgentMapping, Call, CallDirection, CallSource, utcnow
from ..ultravox import UltravoxClient

log = logging.getLogger(__name__)

METADATA_PREFIX = "telephony."
PARTIAL_SUCCESS_WARNING = "Call created but failed to save to database"
MAX_METADATA_ENTRIES = 20
MAX_METADATA_VALUE = 500


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


def call_metadata(*, call_id: uuid.UUID, agency_id: uuid.UUID, agent: AgentMapping, source: CallSource,
                  direction: CallDirection, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Ultravox metadata: string values only; ours under the `telephony.` prefix
    (Ultravox reserves `ultravox.`), the caller's own keys kept as given."""
    metadata = {str(k): str(v) for k, v in (extra or {}).items() if not str(k).startswith(METADATA_PREFIX)}
    metadata.update({
        "telephony.call_id": str(call_id),
        "telephony.agency_id": str(agency_id),
        "telephony.agent_id": str(agent.id),
        "telephony.source": source.value,
        "telephony.direction": direction.value,
    })
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


@dataclass
class StartedCall:
    call_id: uuid.UUID | None  # None when the Ultravox call exists but our insert failed
    ultravox_call_id: str
    join_url: str
    created_at: datetime
    warning: str | None = None
    ultravox_call: dict[str, Any] = field(default_factory=dict, repr=False)


def start_call(session: Session, *, agency_id: uuid.UUID, agent: AgentMapping, medium: dict,
               source: CallSource, direction: CallDirection, first_speaker: str = "agent",
               from_number: str | None = None, to_number: str | None = None,
               template_context: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
               recording_enabled: bool | None = None, extra_body: dict[str, Any] | None = None,
               stored_metadata: dict[str, Any] | None = None, status: str = "created",
               timeout: float | tuple[float, float] | None = None) -> StartedCall:
    """Create the Ultravox call, then record it.

    Ultravox errors propagate (UltravoxError subclasses) with nothing written.
    A failed insert after a successful create is the seeds' partial success:
    the StartedCall has call_id=None and a warning, and the call is logged so
    the webhook ingest can rebuild the row from its metadata.
    """
    client = ultravox_client_for(session, agency_id)
    call_id = uuid.uuid4()
    call_id_var.set(str(call_id))
    body = agent_call_body(
        medium=medium, first_speaker=first_speaker, template_context=template_context,
        recording_enabled=agent.recording_enabled if recording_enabled is None else recording_enabled,
        metadata=call_metadata(call_id=call_id, agency_id=agency_id, agent=agent, source=source,
                               direction=direction, extra=metadata),
        extra=extra_body,
    )
    # End the read transaction before waiting on Ultravox: no database
    # connection or lock is held across the upstream call.
    agent_id, ultravox_agent_id = agent.id, agent.ultravox_agent_id
    session.rollback()
    created = client.create_agent_call(ultravox_agent_id, body, timeout=timeout)
    started = StartedCall(call_id=call_id, ultravox_call_id=created["callId"], join_url=created.get("joinUrl") or "",
                          created_at=_parse_time(created.get("created")) or utcnow(), ultravox_call=created)
    try:
        session.add(Call(id=call_id, agency_id=agency_id, agent_id=agent_id, ultravox_call_id=started.ultravox_call_id,
                         source=source, direction=direction, from_number=from_number, to_number=to_number,
                         status=status, metadata_=stored_metadata or {}, created_at=started.created_at))
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.exception("call %s created in Ultravox as %s but not saved; the webhook ingest will repair it",
                      call_id, started.ultravox_call_id)
        started.call_id = None
        started.warning = PARTIAL_SUCCESS_WARNING
    return started


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None
