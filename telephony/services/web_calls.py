"""Browser and server-socket calls, and links to call recordings.

Four use cases, the calls all started by `calls.start_call` (which creates the
Ultravox agent call, records it and implements the seeds' partial success):

- the dashboard's test call (seed calls-create): webRtc, agent speaks first;
- a public web call started by a widget with a public key (seed create-web-call);
- a server-to-server call on Ultravox's serverWebSocket medium;
- a link to a call's recording (seed get-call-recording).
"""
from __future__ import annotations

import logging
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..config import get_config
from ..errors import Forbidden, InvalidInput, NotFound, UpstreamFailed
from ..models import AgentMapping, Call, CallDirection, CallSource, PublicKey
from ..signing import UrlSigner
from ..ultravox import Recording
from ..ultravox_errors import UltravoxError
from . import agents, calls
from .calls import MissingUltravoxKey, StartedCall, ultravox_client_for

log = logging.getLogger(__name__)

WEBRTC: dict[str, dict] = {"webRtc": {}}
# Public web call `type` -> Ultravox initialOutputMedium. Every type can still
# switch medium during the call; this is only how the agent starts.
WEB_CALL_OUTPUT_MEDIUM = {
    "text": "MESSAGE_MEDIUM_TEXT",
    "WebAudio": "MESSAGE_MEDIUM_VOICE",
    "TextAudio": "MESSAGE_MEDIUM_VOICE",
}
AGENT_REF = re.compile(r"[A-Za-z0-9_-]{1,64}")  # an Ultravox agent id or our mapping uuid
RECORDING_LINK_TTL_SECONDS = 300  # as long as Ultravox's own signed storage URLs live
RECORDING_SIGNING_PURPOSE = "recording"


class MisconfiguredAgent(InvalidInput):
    code = "misconfigured_agent"


@contextmanager
def _ultravox_errors(public: bool) -> Iterator[None]:
    """Ultravox failures become 502. Dashboard users see Ultravox's own message
    (`detail` never contains the key); anonymous widget users see none of it."""
    try:
        yield
    except UltravoxError as exc:
        log.warning("Ultravox refused a web call: %s", exc)
        message = "Could not start the call; try again later" if public else f"Ultravox API error: {exc.detail}"
        raise UpstreamFailed(message) from None


# -- calls ------------------------------------------------------------------------------

def start_dashboard_test_call(session: Session, agency_id: uuid.UUID, ultravox_agent_id: str) -> StartedCall:
    """Seed calls-create: a browser (webRtc) test call with one of the agency's agents."""
    agent = agents.find_agent(session, agency_id, ultravox_agent_id)
    with _ultravox_errors(public=False):
        return calls.start_call(session, calls.NewCall(
            agency_id=agency_id, agent=agent, medium=WEBRTC, source=CallSource.webrtc,
            direction=CallDirection.outbound, first_speaker="agent",
            metadata={"test_call": "true"}, stored_metadata={"test_call": True}))


def start_websocket_call(session: Session, agency_id: uuid.UUID, ultravox_agent_id: str, *,
                         input_sample_rate: int, output_sample_rate: int | None = None,
                         client_buffer_size_ms: int | None = None) -> StartedCall:
    """A server-to-server call: the caller's server joins `join_url` over a
    plain WebSocket and streams s16le PCM both ways."""
    agent = agents.find_agent(session, agency_id, ultravox_agent_id)
    socket: dict[str, int] = {"inputSampleRate": input_sample_rate}
    if output_sample_rate is not None:
        socket["outputSampleRate"] = output_sample_rate
    if client_buffer_size_ms is not None:
        socket["clientBufferSizeMs"] = client_buffer_size_ms
    with _ultravox_errors(public=False):
        return calls.start_call(session, calls.NewCall(
            agency_id=agency_id, agent=agent, medium={"serverWebSocket": socket}, source=CallSource.websocket,
            direction=CallDirection.outbound, first_speaker="agent", stored_metadata={"server_websocket": socket}))


def public_key_agent(session: Session, key: PublicKey, agent_ref: str) -> AgentMapping:
    """The agent a widget names in `voicehub-agent-id`: its Ultravox agent id
    or our mapping id, of the key's agency and listed on the key. Anything
    else is the seed's 400 "misconfigured agent", with one message for all
    cases so the answer does not reveal which agents exist."""
    agent_ref = agent_ref.strip()
    agent = None
    if AGENT_REF.fullmatch(agent_ref):  # also keeps e.g. NUL bytes, which PostgreSQL refuses, out of the query
        try:
            agent = agents.find_agent(session, key.agency_id, agent_ref)
        except NotFound:
            agent = None
    if agent is None or str(agent.id) not in key.agent_ids:
        raise MisconfiguredAgent("Misconfigured agent: unknown, or not enabled for this key",
                                 field="voicehub-agent-id")
    return agent


def start_public_web_call(session: Session, key: PublicKey, agent_ref: str, call_type: str) -> StartedCall:
    """Seed create-web-call, for a key already authenticated and rate-limited."""
    if call_type not in WEB_CALL_OUTPUT_MEDIUM:
        raise InvalidInput(f"type must be one of {', '.join(WEB_CALL_OUTPUT_MEDIUM)}", field="type")
    agent = public_key_agent(session, key, agent_ref)
    key_id = key.id
    try:
        with _ultravox_errors(public=True):
            return calls.start_call(session, calls.NewCall(
                agency_id=agent.agency_id, agent=agent, medium=WEBRTC, source=CallSource.webrtc,
                direction=CallDirection.outbound, first_speaker="agent",
                extra_body={"initialOutputMedium": WEB_CALL_OUTPUT_MEDIUM[call_type]},
                metadata={"public_web_call": "true", "web_call_type": call_type},
                stored_metadata={"public_web_call": True, "public_key_id": str(key_id), "type": call_type}))
    except MissingUltravoxKey:
        # For the widget this is just a misconfigured agent; the agency sees the cause in its settings.
        raise MisconfiguredAgent("Misconfigured agent: the agency has no Ultravox API key",
                                 field="voicehub-agent-id") from None


# -- recordings ---------------------------------------------------------------------------

class RecordingUnavailable(NotFound):
    code = "recording_unavailable"


class InvalidLink(Forbidden):
    code = "invalid_link"


@dataclass(frozen=True)
class RecordingLink:
    """Either Ultravox's own short-lived storage URL, or the parts of a signed
    link to our streaming route (the blueprint turns them into a URL)."""

    storage_url: str | None = None
    call_id: uuid.UUID | None = None
    expires: int | None = None
    signature: str | None = None


def recording_signer() -> UrlSigner:
    return UrlSigner(get_config().credentials_keys, RECORDING_SIGNING_PURPOSE)


def _fetch_recording(session: Session, call: Call, byte_range: str | None = None) -> Recording:
    """Ask Ultravox for the recording (or the `byte_range` of it). Every failure is
    the seed's 404 "recording not available": not enabled, not ready, gone, or
    Ultravox unreachable look the same to the user, and the log keeps the cause."""
    agency_id, ultravox_call_id = call.agency_id, str(call.ultravox_call_id)
    client = ultravox_client_for(session, agency_id)
    session.rollback()  # no database transaction held open while Ultravox answers
    try:
        return client.get_recording(ultravox_call_id, byte_range)
    except UltravoxError as exc:
        log.info("recording of %s not available: %s", ultravox_call_id, exc)
        raise RecordingUnavailable("Recording not available") from None


def _call_with_recording(session: Session, call_id: uuid.UUID, agency_id: uuid.UUID | None = None) -> Call:
    query = select(Call).where(Call.id == call_id)
    if agency_id is not None:
        query = query.where(Call.agency_id == agency_id)
    call = session.scalar(query)
    # Another agency's call is reported exactly like a missing one.
    if call is None or not call.has_recording or not call.ultravox_call_id:
        raise RecordingUnavailable("Call not found, or it has no recording")
    return call


def recording_link(session: Session, agency_id: uuid.UUID, call_id: uuid.UUID) -> RecordingLink:
    """Seed get-call-recording. A 302 from Ultravox gives its storage URL
    (signed, fetched without our key). A 200 means Ultravox serves the audio
    only to holders of the API key, so the user gets a signed link to our own
    route instead, which fetches the audio server-side: the key never leaves."""
    call = _call_with_recording(session, call_id, agency_id)
    recording = _fetch_recording(session, call)
    if recording.redirect_url:
        return RecordingLink(storage_url=recording.redirect_url)
    if recording.response is not None:
        recording.response.close()  # only needed to learn that the audio exists
    expires, signature = recording_signer().sign(str(call_id), ttl_seconds=RECORDING_LINK_TTL_SECONDS)
    return RecordingLink(call_id=call_id, expires=expires, signature=signature)


def open_signed_recording(session: Session, call_id: uuid.UUID, expires: int, signature: str,
                          byte_range: str | None = None) -> Recording:
    """The recording behind a signed link: a redirect to Ultravox's storage or
    the streamed audio, or the `byte_range` of it (the caller must close
    `response`). The signature is the authorization; it names the call, so no
    agency check is needed."""
    if not recording_signer().verify(str(call_id), expires, signature):
        raise InvalidLink("Invalid or expired link")
    return _fetch_recording(session, _call_with_recording(session, call_id), byte_range)

