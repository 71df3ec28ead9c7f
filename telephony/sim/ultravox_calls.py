"""Ultravox simulator: what a created call looks like. The request checks Ultravox
makes (metadata, first speaker, medium, durations), the Call object it answers, and the
transcript pages of GET /api/calls/<id>/messages (cursor paging)."""
from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any
from urllib.parse import urlencode

from flask import request

from telephony.sim.common import (
    SimError,
    utc_now_iso,
)

OUTPUT_MEDIUMS = ("MESSAGE_MEDIUM_UNSPECIFIED", "MESSAGE_MEDIUM_VOICE", "MESSAGE_MEDIUM_TEXT")

DURATION_RE = re.compile(r"^-?(?:0|[1-9][0-9]{0,11})(?:\.[0-9]{1,9})?s$")

DEFAULT_PAGE_SIZE = 100

MAX_PAGE_SIZE = 1000

_TRANSCRIPT_LINES = (
    ("MESSAGE_ROLE_AGENT", "Hello, this is the simulated agent. How can I help you today?"),
    ("MESSAGE_ROLE_USER", "Hi, I would like to check on my appointment."),
    ("MESSAGE_ROLE_AGENT", "Of course. Could you tell me your name, please?"),
    ("MESSAGE_ROLE_USER", "It is Jane Doe."),
    ("MESSAGE_ROLE_AGENT", "Thanks Jane, your appointment is confirmed for tomorrow at ten."),
    ("MESSAGE_ROLE_USER", "Great, thank you. Goodbye."),
)


def detail_error(status: int, detail: str) -> SimError:
    return SimError(status, {"detail": detail})


def format_duration(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def error_body(path: str, status: int, mode: str) -> dict[str, Any]:
    if mode == "rate_limit":
        return {"detail": "Request was throttled."}
    if mode == "unavailable":
        return {"detail": "Service temporarily unavailable. Please retry later."}
    return {"detail": f"Simulated error (HTTP {status})."}


def _validate_metadata(body: dict[str, Any]) -> dict[str, str]:
    metadata = body.get("metadata", {})
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise detail_error(400, "metadata must be an object mapping strings to strings.")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise detail_error(400, f"metadata value for {key!r} must be a string.")
        if key.startswith("ultravox."):
            raise detail_error(400, f"metadata key {key!r} uses the reserved 'ultravox.' prefix.")
    return dict(metadata)


def _first_speaker_settings(body: dict[str, Any]) -> dict[str, Any]:
    settings = body.get("firstSpeakerSettings")
    legacy = body.get("firstSpeaker")
    if settings is None:
        return {"user": {}} if legacy == "FIRST_SPEAKER_USER" else {"agent": {}}
    if not isinstance(settings, dict) or len(settings) != 1 or next(iter(settings)) not in ("user", "agent"):
        raise detail_error(400, "firstSpeakerSettings must set exactly one of 'user' or 'agent'.")
    if legacy not in (None, "FIRST_SPEAKER_UNSPECIFIED"):
        expected = "FIRST_SPEAKER_USER" if "user" in settings else "FIRST_SPEAKER_AGENT"
        if legacy != expected:
            raise detail_error(400, "firstSpeaker and firstSpeakerSettings must match.")
    return settings


def _medium(body: dict[str, Any]) -> dict[str, Any]:
    medium = body.get("medium")
    if medium is None:
        return {"webRtc": {}}
    if not isinstance(medium, dict) or len(medium) > 1:
        raise detail_error(400, "At most one call medium may be set.")
    return medium if medium else {"webRtc": {}}


def _check_duration(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not DURATION_RE.match(value)):
        raise detail_error(400, f"{name} must be a duration string such as '30s'.")


def build_call(body: dict[str, Any], *, call_id: str, host: str, agent_id: str | None) -> dict[str, Any]:
    metadata = _validate_metadata(body)
    first_speaker_settings = _first_speaker_settings(body)
    medium = _medium(body)
    for name in ("joinTimeout", "maxDuration"):
        _check_duration(body, name)
    output_medium = body.get("initialOutputMedium") or "MESSAGE_MEDIUM_VOICE"
    if output_medium not in OUTPUT_MEDIUMS:
        raise detail_error(400, f"initialOutputMedium must be one of {', '.join(OUTPUT_MEDIUMS)}.")
    if output_medium == "MESSAGE_MEDIUM_UNSPECIFIED":
        output_medium = "MESSAGE_MEDIUM_VOICE"
    recording_enabled = body.get("recordingEnabled", False)
    if not isinstance(recording_enabled, bool):
        raise detail_error(400, "recordingEnabled must be a boolean.")
    # Outgoing SIP calls are dialled by Ultravox itself and have no joinUrl.
    sip = medium.get("sip")
    has_join_url = not (isinstance(sip, dict) and "outgoing" in sip)
    call: dict[str, Any] = {
        "callId": call_id,
        "clientVersion": None,
        "created": utc_now_iso(),
        "joined": None,
        "ended": None,
        "endReason": None,
        "billedDuration": None,
        "billedSideInputTokens": None,
        "billedSideOutputTokens": None,
        "billingStatus": "BILLING_STATUS_PENDING",
        "firstSpeaker": "FIRST_SPEAKER_USER" if "user" in first_speaker_settings else "FIRST_SPEAKER_AGENT",
        "firstSpeakerSettings": first_speaker_settings,
        "inactivityMessages": body.get("inactivityMessages") or [],
        "initialOutputMedium": output_medium,
        "joinTimeout": body.get("joinTimeout") or "30s",
        # wss:// like the real API; only ever placed into XML, never dialled in tests.
        "joinUrl": f"wss://{host}/calls/{call_id}/join" if has_join_url else None,
        "languageHint": body.get("languageHint"),
        "maxDuration": body.get("maxDuration") or "3600s",
        "medium": medium,
        "model": body.get("model") or "ultravox-v0.7",
        "recordingEnabled": recording_enabled,
        "retentionPolicy": None,
        "systemPrompt": body.get("systemPrompt"),
        "temperature": body.get("temperature", 0.0),
        "timeExceededMessage": body.get("timeExceededMessage"),
        "voice": body.get("voice"),
        "transcriptOptional": body.get("transcriptOptional", True),
        "vadSettings": body.get("vadSettings"),
        "shortSummary": None,
        "summary": None,
        # The spec marks `agent` required and not nullable, but a plain call has no
        # agent; DRF renders a missing related object as null, so that is what we send.
        "agent": {"agentId": agent_id, "name": f"sim-agent-{agent_id[:8]}"} if agent_id else None,
        "agentId": agent_id,
        "experimentalSettings": body.get("experimentalSettings") or {},
        "metadata": metadata,
        "initialState": body.get("initialState") or {},
        "requestContext": {},
        "sipDetails": None,
    }
    # Optional, non-nullable message fields: present only when set (protobuf JSON style).
    for source, target in (
        ("externalVoice", "externalVoice"),
        ("voiceOverrides", "voiceOverrides"),
        ("dataConnection", "dataConnectionConfig"),
        ("callbacks", "callbacks"),
    ):
        if body.get(source) is not None:
            call[target] = body[source]
    return call


def transcript(call_id: str, count: int) -> list[dict[str, Any]]:
    """Deterministic messages so tests can assert exact text and order."""
    stage_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-stage:{call_id}"))
    messages = []
    for index in range(count):
        role, text = _TRANSCRIPT_LINES[index % len(_TRANSCRIPT_LINES)]
        start = index * 3.0
        messages.append(
            {
                "role": role,
                "text": f"{text} [{index + 1}]" if index >= len(_TRANSCRIPT_LINES) else text,
                "medium": "MESSAGE_MEDIUM_VOICE",
                "callStageMessageIndex": index,
                "callStageId": stage_id,
                "timespan": {"start": format_duration(start), "end": format_duration(start + 2.5)},
            }
        )
    return messages


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o={offset}".encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        decoded = base64.urlsafe_b64decode(cursor.encode()).decode()
        name, _, value = decoded.partition("=")
        offset = int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise detail_error(404, "Invalid cursor") from None
    if name != "o" or offset < 0:
        raise detail_error(404, "Invalid cursor")
    return offset


def page_url(cursor: str | None) -> str | None:
    """The current URL with only ``cursor`` replaced, as DRF's CursorPagination does."""
    if cursor is None:
        return None
    params = [(key, value) for key, value in request.args.items(multi=True) if key != "cursor"]
    params.append(("cursor", cursor))
    return f"{request.base_url}?{urlencode(params)}"


def page_size() -> int:
    raw = request.args.get("pageSize")
    try:
        size = int(raw) if raw is not None else DEFAULT_PAGE_SIZE
    except ValueError:
        return DEFAULT_PAGE_SIZE  # DRF ignores an unparsable page size
    return DEFAULT_PAGE_SIZE if size < 1 else min(size, MAX_PAGE_SIZE)
