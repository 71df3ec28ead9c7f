"""Browser and server-socket calls, and recording links.

Drop-in replacements for the dashboard's Supabase edge functions (same paths,
bodies and status codes as the seeds):

- POST /functions/v1/calls-create        dashboard test call (webRtc), JWT
- GET  /functions/v1/get-call-recording  link to a call's recording, JWT

and:

- POST /calls/public/create-web-call     widget call with a public key (pk_...)
- POST /api/v1/calls/websocket           server-to-server call (serverWebSocket)
- GET  /recordings/<call_id>             the signed, short-lived recording link
                                         that get-call-recording hands out when
                                         Ultravox serves the audio only with our key

CORS is answered here for these paths only (see `CORS_POLICIES`).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from flask import Blueprint, Response, g, jsonify, redirect, request, url_for
from pydantic import ConfigDict, Field

from ..auth import current_principal, require_auth
from ..config import get_config
from ..db import get_session
from ..logging import agency_id_var
from ..services import public_keys as public_key_service
from ..services import web_calls as web_call_service
from ..services.calls import StartedCall
from .management import UltravoxId
from .schema import RequestModel, ResponseModel, document, parse_body, parse_query

bp = Blueprint("web_calls", __name__)

STREAM_CHUNK_BYTES = 64 * 1024
PREFLIGHT_MAX_AGE = "600"  # seconds a browser may cache a preflight answer


# -- schemas ---------------------------------------------------------------------------

class DashboardModel(RequestModel):
    # The dashboard's edge functions ignored unknown fields; as their drop-in
    # replacement, so do we, rather than breaking a client that sends extras.
    model_config = ConfigDict(extra="ignore")


class CallsCreateIn(DashboardModel):
    agent_id: str = UltravoxId


class RecordingQuery(DashboardModel):
    call_id: uuid.UUID = Field(description="Our call id (not the Ultravox call id).")


class SignedLinkQuery(DashboardModel):
    expires: int = Field(ge=0, le=10**12)
    signature: str = Field(min_length=1, max_length=128)


class PublicWebCallIn(DashboardModel):
    type: Literal["text", "WebAudio", "TextAudio"]


assert set(PublicWebCallIn.model_fields["type"].annotation.__args__) == set(  # type: ignore[union-attr]
    web_call_service.WEB_CALL_OUTPUT_MEDIUM)

SampleRate = Field(ge=8000, le=48000, description="Hz, 8000 to 48000.")


class WebSocketCallIn(RequestModel):
    agent_id: str = UltravoxId
    inputSampleRate: int = SampleRate
    outputSampleRate: int | None = Field(default=None, ge=8000, le=48000,
                                         description="Hz; defaults to inputSampleRate.")
    clientBufferSizeMs: int | None = Field(default=None, ge=20, le=60000,
                                           description="Client-side audio buffer; Ultravox defaults to 60.")


class CallStartedOut(ResponseModel):
    call_id: uuid.UUID | None = Field(description="Our call id; null when the call could not be saved.")
    ultravox_call_id: str
    join_url: str
    created_at: datetime
    warning: str | None = Field(default=None, description="Only on partial success.")


class RecordingOut(ResponseModel):
    recording_url: str


class PublicWebCallOut(ResponseModel):
    callId: str
    webCallSocketPath: str = Field(description="The Ultravox joinUrl to connect to.")


def _started(started: StartedCall):
    body = CallStartedOut.model_validate(started).model_dump(mode="json")
    if body["warning"] is None:
        del body["warning"]  # the seed's success body has no warning key
    return jsonify(body), 201


NOT_FOUND_AGENT = (None, "Agent not found or not the caller's agency's")
UPSTREAM = (None, "Ultravox returned an error; `error` carries its message")
UPSTREAM_RATE_LIMITED = (None, "Ultravox is rate-limiting the agency; see Retry-After")
JWT_ONLY = ["bearerAuth"]


# -- routes -------------------------------------------------------------------------------

@bp.post("/functions/v1/calls-create")
@require_auth(allow_api_key=False)
@document(summary="Create a WebRTC test call with one of the agency's agents (seed calls-create)",
          tags=["web calls"], request_model=CallsCreateIn, security=JWT_ONLY,
          responses={201: (CallStartedOut, "Created (call_id null + warning on partial success)"),
                     400: (None, "agent_id missing, or no Ultravox key for the agency"),
                     401: (None, "Missing or invalid token"), 403: (None, "User without an agency"),
                     404: NOT_FOUND_AGENT, 429: UPSTREAM_RATE_LIMITED, 500: (None, "Credentials cannot be read"),
                     502: UPSTREAM})
def calls_create():
    body = parse_body(CallsCreateIn)
    return _started(web_call_service.start_dashboard_test_call(get_session(), current_principal().agency_id,
                                                                 body.agent_id))


@bp.get("/functions/v1/get-call-recording")
@require_auth(allow_api_key=False)
@document(summary="A short-lived URL of a call's recording (seed get-call-recording)", tags=["web calls"],
          security=JWT_ONLY,
          parameters=[{"name": "call_id", "in": "query", "required": True,
                       "schema": {"type": "string", "format": "uuid"}, "description": "Our call id"}],
          responses={200: (RecordingOut, "Recording URL"), 400: (None, "call_id missing or malformed, or no "
                                                                       "Ultravox key for the agency"),
                     401: (None, "Missing or invalid token"), 403: (None, "User without an agency"),
                     404: (None, "No such call of the agency, no recording, or Ultravox has none"),
                     429: UPSTREAM_RATE_LIMITED, 500: (None, "Credentials cannot be read")})
def get_call_recording():
    query = parse_query(RecordingQuery)
    link = web_call_service.recording_link(get_session(), current_principal().agency_id, query.call_id)
    if link.storage_url:
        return jsonify(RecordingOut(recording_url=link.storage_url).model_dump())
    path = url_for("web_calls.recording_audio", call_id=link.call_id, expires=link.expires,
                   signature=link.signature)
    return jsonify(RecordingOut(recording_url=get_config().public_base_url + path).model_dump())


@bp.get("/recordings/<uuid:call_id>")
@document(summary="The recording behind a signed link from get-call-recording", tags=["web calls"],
          security=[],
          parameters=[{"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                      {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}},
                      {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
                       "description": "One byte range (bytes=start-end), passed on to Ultravox"}],
          responses={200: (None, "The audio (audio/wav)"), 302: (None, "To Ultravox's signed storage URL"),
                     206: (None, "The requested byte range of the audio (Content-Range)"),
                     416: (None, "The byte range lies outside the audio"),
                     400: (None, "expires or signature missing"), 403: (None, "Invalid or expired link"),
                     404: (None, "Recording not available")})
def recording_audio(call_id: uuid.UUID):
    query = parse_query(SignedLinkQuery)
    recording = web_call_service.open_signed_recording(get_session(), call_id, query.expires, query.signature,
                                                       _forwardable_range())
    if recording.redirect_url:
        # The browser follows this itself (with its Range); our API key is never sent there.
        return redirect(recording.redirect_url, 302)
    upstream = recording.response
    assert upstream is not None
    response = Response(upstream.iter_content(STREAM_CHUNK_BYTES), status=recording.status,
                        content_type=recording.content_type or "audio/wav")
    response.headers.update(recording.headers)  # Content-Range, Accept-Ranges, Content-Length
    response.call_on_close(upstream.close)
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# One byte range, as audio players send when seeking ("bytes=1000-", "bytes=0-99", "bytes=-500").
_SINGLE_BYTE_RANGE = re.compile(r"bytes=(?:\d{1,15}-\d{0,15}|-\d{1,15})")


def _forwardable_range() -> str | None:
    """The request's Range header if Ultravox can be asked for exactly that. Anything
    else (several ranges, another unit, a conditional If-Range we hold no validator
    for) gets the whole recording, which HTTP allows a server to answer instead."""
    value = request.headers.get("Range", "").strip()
    if "If-Range" in request.headers or not _SINGLE_BYTE_RANGE.fullmatch(value):
        return None
    return value


@bp.post("/calls/public/create-web-call")
@document(summary="Start a web call from a widget with a public key (seed create-web-call)", tags=["web calls"],
          request_model=PublicWebCallIn, security=["publicKeyAuth"],
          parameters=[{"name": "voicehub-agent-id", "in": "header", "required": True,
                       "schema": {"type": "string", "maxLength": 64},
                       "description": "The agent's Ultravox agent id, or our agent mapping id"}],
          responses={201: (PublicWebCallOut, "Created"),
                     400: (None, "Misconfigured agent, or invalid type"), 401: (None, "Invalid or revoked key"),
                     403: (None, "Insufficient credits, or an origin the key does not allow"),
                     429: (None, "The key's rate limit is exhausted; see Retry-After"),
                     502: (None, "The call could not be started")})
def create_public_web_call():
    session = get_session()
    key = public_key_service.authenticate_public_key(session, request.headers.get("x-api-access-key", ""),
                                                     origin=request.headers.get("Origin"),
                                                     client=request.remote_addr or "")
    agency_id_var.set(str(key.agency_id))
    g.public_key_origins = list(key.allowed_origins)  # for the CORS answer, see _cors()
    public_key_service.consume_rate_limit(session, public_key_service.public_key_bucket(key),
                                          limit=key.rate_limit_per_minute)
    body = parse_body(PublicWebCallIn)
    started = web_call_service.start_public_web_call(session, key, request.headers.get("voicehub-agent-id", ""),
                                                     body.type)
    out = PublicWebCallOut(callId=str(started.call_id or started.ultravox_call_id),
                           webCallSocketPath=started.join_url)
    return jsonify(out.model_dump()), 201


@bp.post("/api/v1/calls/websocket")
@require_auth(scope="calls:write")
@document(summary="Start a server-to-server call on Ultravox's serverWebSocket medium", tags=["web calls"],
          request_model=WebSocketCallIn,
          responses={201: (CallStartedOut, "Created; connect to join_url"),
                     400: (None, "Invalid input, or no Ultravox key for the agency"),
                     401: (None, "Missing or invalid credentials"), 403: (None, "Needs calls:write"),
                     404: NOT_FOUND_AGENT, 429: UPSTREAM_RATE_LIMITED, 502: UPSTREAM})
def create_websocket_call():
    body = parse_body(WebSocketCallIn)
    return _started(web_call_service.start_websocket_call(
        get_session(), current_principal().agency_id, body.agent_id, input_sample_rate=body.inputSampleRate,
        output_sample_rate=body.outputSampleRate, client_buffer_size_ms=body.clientBufferSizeMs))


# -- errors and CORS ------------------------------------------------------------------------

@dataclass(frozen=True)
class CorsPolicy:
    methods: str
    headers: str
    # Public web calls: the origins come from the key, known only once it is
    # authenticated; before that (and for an origin the key refuses) nothing
    # is exposed to the page.
    per_key_origins: bool = False


CORS_POLICIES = {
    # Bearer tokens, no cookies and no Allow-Credentials: any origin may call,
    # but only with a token, which a foreign page does not have.
    "web_calls.calls_create": CorsPolicy("POST, OPTIONS", "Authorization, Content-Type"),
    "web_calls.get_call_recording": CorsPolicy("GET, OPTIONS", "Authorization"),
    # The signature in the link is the authorization (e.g. for fetch() in a player).
    "web_calls.recording_audio": CorsPolicy("GET, OPTIONS", "Range"),
    # X-API-Key is deliberately not allowed: server keys do not belong in browsers.
    "web_calls.create_websocket_call": CorsPolicy("POST, OPTIONS", "Authorization, Content-Type"),
    "web_calls.create_public_web_call": CorsPolicy("POST, OPTIONS",
                                                   "Content-Type, x-api-access-key, voicehub-agent-id",
                                                   per_key_origins=True),
}


@bp.after_request
def _cors(response: Response) -> Response:
    policy = CORS_POLICIES.get(request.endpoint or "")
    if policy is None:
        return response
    if request.method == "OPTIONS":
        # Preflight (Flask's automatic OPTIONS answer). It carries no key, so
        # it is answered permissively; the POST itself enforces the origin.
        response.status_code = 204
        response.set_data(b"")
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Methods"] = policy.methods
        response.headers["Access-Control-Allow-Headers"] = policy.headers
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response
    allow_origin: str | None = "*"
    if policy.per_key_origins:
        response.vary.add("Origin")
        origins = g.get("public_key_origins")
        origin = request.headers.get("Origin")
        if origins is None or not public_key_service.origin_allowed(origins, origin):
            allow_origin = None
        elif origins:
            allow_origin = origin  # echo only an origin the key lists, never "*"
    if allow_origin is not None:
        response.headers["Access-Control-Allow-Origin"] = allow_origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-ID"
    return response
