"""A local Ultravox REST API simulator (loopback only).

Emulates the parts of https://api.ultravox.ai our service uses: call creation (plain
and agent calls), GET call, the transcript (DRF cursor pagination), the recording
(302 to a signed storage URL, or 200 audio/wav), send_data_message (hang_up) and the
signed ``call.*`` webhooks. Shapes follow Ultravox's API reference and
tests/fixtures/ultravox-openapi.yaml.

Sim-only control endpoints (besides the shared ones in ``common``):

- ``POST /_sim/calls/<id>/join``  marks the call joined.
- ``POST /_sim/calls/<id>/end``   ``{"endReason": "hangup", "billedDuration": "42s",
  "messageCount": 6}`` ends it and fires ``call.ended`` + ``call.billed``.
- ``GET  /_sim/calls[/<id>]``     calls with sim-only details (templateContext, data messages).
- ``GET  /_sim/webhooks``         webhook delivery attempts.
- ``GET  /_sim/storage-requests`` requests to the fake storage host (did they carry the key?).
- ``GET  /_sim/storage/<id>.wav`` the fake signed-URL storage host.
- ``POST /_sim/config`` also takes ``webhook_url``, ``webhook_secret``, ``webhook_secrets``,
  ``emit_started``, ``emit_joined``, ``recording_mode``, ``transcript_messages``,
  ``max_concurrent_calls`` (an account's concurrency limit: creating a call while that
  many have not ended answers 429; null: no limit).
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import secrets
import threading
import time
import uuid
import wave
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

import requests
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from telephony.sim.common import (
    Injector,
    install_control_api,
    json_object_body,
    utc_now_iso,
)
from telephony.sim.tool_invoker import install_tool_invoker
from telephony.sim.ultravox_calls import (
    DURATION_RE,
    build_call,
    decode_cursor,
    detail_error,
    encode_cursor,
    error_body,
    format_duration,
    page_size,
    page_url,
    transcript,
)

RecordingMode = Literal["redirect", "direct"]
RECORDING_MODES: tuple[str, ...] = ("redirect", "direct")

END_REASONS = ("unjoined", "hangup", "agent_hangup", "timeout", "connection_error", "system_error")
DEFAULT_TRANSCRIPT_MESSAGES = 6
# Real webhooks retry for hours; the sim keeps it short so tests stay fast.
WEBHOOK_ATTEMPTS = 4
WEBHOOK_BACKOFF_S = 0.2
WEBHOOK_TIMEOUT_S = 5.0
STORAGE_URL_TTL_S = 300  # the real signed GCS URL expires after 300 s



def silent_wav(seconds: float = 0.1, rate: int = 8000) -> bytes:
    """A small valid mono 16-bit PCM WAV of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(rate * seconds))
    return buffer.getvalue()


_WAV = silent_wav()


def _wav_response() -> Response:
    """The recording, honouring one byte range (206, or 416 outside the file) as the
    real API and its storage do: audio players seek with them."""
    response = Response(_WAV, status=200, mimetype="audio/wav")
    response.make_conditional(request, accept_ranges=True, complete_length=len(_WAV))  # updates it in place
    return response


def sign_webhook(secret: str, body: bytes, timestamp: str) -> str:
    """Ultravox webhook signature: hex HMAC-SHA256(secret, raw body + timestamp)."""
    return hmac.new(secret.encode("utf-8"), body + timestamp.encode("utf-8"), hashlib.sha256).hexdigest()




def _duration_seconds(value: str) -> float:
    return float(value[:-1])




def _parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class _SimCall:
    call: dict[str, Any]
    request_body: dict[str, Any]
    template_context: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    data_messages: list[dict[str, Any]] = field(default_factory=list)

    def sim_view(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "call": self.call,
                "templateContext": self.template_context,
                "dataMessages": self.data_messages,
                "messageCount": len(self.messages),
            }
        )


@dataclass
class _Settings:
    webhook_url: str | None
    webhook_secrets: list[str]
    recording_mode: str
    emit_started: bool = False
    emit_joined: bool = False
    transcript_messages: int = DEFAULT_TRANSCRIPT_MESSAGES
    max_concurrent_calls: int | None = None


class _UltravoxState:
    def __init__(
        self,
        *,
        api_keys: set[str] | None,
        webhook_url: str | None,
        webhook_secret: str | None,
        recording_mode: str,
        max_concurrent_calls: int | None = None,
    ) -> None:
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        self._defaults = _Settings(
            webhook_url=webhook_url,
            webhook_secrets=[webhook_secret] if webhook_secret else [],
            recording_mode=recording_mode,
            max_concurrent_calls=max_concurrent_calls,
        )
        self.lock = threading.Lock()
        self.settings = copy.deepcopy(self._defaults)
        self.calls: dict[str, _SimCall] = {}
        self.webhook_attempts: list[dict[str, Any]] = []
        self.storage_requests: list[dict[str, Any]] = []
        # Signs the fake storage URLs, like GCS signed URLs; never leaves the process.
        self.storage_key = secrets.token_bytes(32)

    def reset(self) -> None:
        with self.lock:
            self.settings = copy.deepcopy(self._defaults)
            self.calls.clear()
            self.webhook_attempts.clear()
            self.storage_requests.clear()

    def get(self, call_id: str) -> _SimCall:
        found = self.calls.get(call_id)
        if found is None:
            raise detail_error(404, "Not found.")
        return found

    # -- webhooks -----------------------------------------------------------------

    def fire(self, *events: tuple[str, dict[str, Any]]) -> None:
        """Deliver events in order on one background thread (ended before billed)."""
        with self.lock:
            url = self.settings.webhook_url
            webhook_secrets = list(self.settings.webhook_secrets)
        if not url:
            return
        thread = threading.Thread(
            target=self._deliver_all, args=(url, webhook_secrets, events), daemon=True
        )
        thread.start()

    def _deliver_all(
        self, url: str, webhook_secrets: list[str], events: tuple[tuple[str, dict[str, Any]], ...]
    ) -> None:
        # requests.Session is not documented as thread-safe: one per delivery thread.
        # trust_env=False so a proxy from the environment never sees sim traffic.
        with requests.Session() as http:
            http.trust_env = False
            for event, call in events:
                self._deliver(http, url, webhook_secrets, event, call)

    def _deliver(
        self,
        http: requests.Session,
        url: str,
        webhook_secrets: list[str],
        event: str,
        call: dict[str, Any],
    ) -> None:
        body = json.dumps({"event": event, "call": call}, separators=(",", ":")).encode("utf-8")
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            timestamp = utc_now_iso()  # "the time the webhook was sent": new per attempt
            headers = {"Content-Type": "application/json", "X-Ultravox-Webhook-Timestamp": timestamp}
            if webhook_secrets:
                # One signature per secret, comma-separated, as Ultravox does for rotation.
                headers["X-Ultravox-Webhook-Signature"] = ",".join(
                    sign_webhook(secret, body, timestamp) for secret in webhook_secrets
                )
            record: dict[str, Any] = {
                "time": timestamp,
                "event": event,
                "callId": call.get("callId"),
                "url": url,
                "attempt": attempt,
                "signed": bool(webhook_secrets),
                "status": None,
                "error": None,
            }
            try:
                response = http.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S)
                record["status"] = response.status_code
                delivered = 200 <= response.status_code < 400  # Ultravox retries 4xx/5xx only
            except requests.RequestException as exc:
                record["error"] = type(exc).__name__
                delivered = False
            with self.lock:
                self.webhook_attempts.append(record)
            if delivered:
                return
            if attempt < WEBHOOK_ATTEMPTS:
                time.sleep(WEBHOOK_BACKOFF_S * 2 ** (attempt - 1))

    # -- storage URLs ---------------------------------------------------------------

    def storage_signature(self, call_id: str, expires: int) -> str:
        return hmac.new(self.storage_key, f"{call_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def create_app(
    *,
    api_keys: set[str] | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    latency_ms: int = 0,
    recording_mode: RecordingMode = "redirect",
    max_concurrent_calls: int | None = None,
) -> Flask:
    """Build the Ultravox simulator app. ``api_keys=None`` accepts any (or no) key;
    ``max_concurrent_calls``: the account's concurrency limit (None: none)."""
    if recording_mode not in RECORDING_MODES:
        raise ValueError("recording_mode must be 'redirect' or 'direct'")
    app = Flask("telephony.sim.ultravox")
    state = _UltravoxState(
        api_keys=api_keys,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        recording_mode=recording_mode,
        max_concurrent_calls=max_concurrent_calls,
    )
    injector = Injector(latency_ms=latency_ms)
    app.extensions["ultravox_sim"] = state

    def on_config(body: dict[str, Any]) -> None:
        with state.lock:
            settings = copy.deepcopy(state.settings)
        if "webhook_url" in body:
            if body["webhook_url"] is not None and not isinstance(body["webhook_url"], str):
                raise ValueError("webhook_url must be a string or null")
            settings.webhook_url = body["webhook_url"] or None
        if "webhook_secret" in body:
            if body["webhook_secret"] is not None and not isinstance(body["webhook_secret"], str):
                raise ValueError("webhook_secret must be a string or null")
            settings.webhook_secrets = [body["webhook_secret"]] if body["webhook_secret"] else []
        if "webhook_secrets" in body:
            value = body["webhook_secrets"]
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                raise ValueError("webhook_secrets must be a list of non-empty strings")
            settings.webhook_secrets = list(value)
        for flag in ("emit_started", "emit_joined"):
            if flag in body:
                if not isinstance(body[flag], bool):
                    raise ValueError(f"{flag} must be a boolean")
                setattr(settings, flag, body[flag])
        if "recording_mode" in body:
            if body["recording_mode"] not in RECORDING_MODES:
                raise ValueError("recording_mode must be 'redirect' or 'direct'")
            settings.recording_mode = body["recording_mode"]
        if "transcript_messages" in body:
            value = body["transcript_messages"]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError("transcript_messages must be a non-negative integer")
            settings.transcript_messages = value
        if "max_concurrent_calls" in body:
            value = body["max_concurrent_calls"]
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError("max_concurrent_calls must be a positive integer or null")
            settings.max_concurrent_calls = value
        with state.lock:
            state.settings = settings

    install_control_api(
        app,
        injector,
        error_body=error_body,
        on_reset=state.reset,
        on_config=on_config,
        default_latency_ms=latency_ms,
    )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # DRF-style JSON errors instead of Flask's HTML pages.
        detail = "Not found." if exc.code == 404 else (exc.description or exc.name)
        if exc.code == 405:
            detail = f'Method "{request.method}" not allowed.'
        response = jsonify({"detail": detail})
        response.status_code = exc.code or 500
        return response

    @app.before_request
    def _authenticate() -> None:
        # Runs after the injector hook (registration order), like a real gateway that
        # may throttle before the app checks the key.
        if not request.path.startswith("/api/") or state.api_keys is None:
            return None
        key = request.headers.get("X-API-Key") or request.headers.get("X-Unsafe-API-Key")
        if not key or key not in state.api_keys:
            raise detail_error(403, "Invalid API key")
        return None

    def _body() -> dict[str, Any]:
        try:
            return json_object_body()
        except ValueError as exc:
            raise detail_error(400, str(exc)) from exc

    def _create(body: dict[str, Any], *, agent_id: str | None, template_context: Any) -> Response:
        call_id = str(uuid.uuid4())
        call = build_call(body, call_id=call_id, host=request.host, agent_id=agent_id)
        sim_call = _SimCall(call=call, request_body=body, template_context=template_context)
        with state.lock:
            limit = state.settings.max_concurrent_calls
            if limit is not None and sum(1 for c in state.calls.values() if c.call["ended"] is None) >= limit:
                # The account's concurrency limit: Ultravox refuses the call (nothing is created).
                raise detail_error(429, f"Concurrency limit reached: {limit} calls are active on this account.")
            state.calls[call_id] = sim_call
            snapshot = copy.deepcopy(call)
            emit_started = state.settings.emit_started
        if emit_started:
            state.fire(("call.started", copy.deepcopy(snapshot)))
        response = jsonify(snapshot)
        response.status_code = 201
        return response

    @app.post("/api/calls")
    def create_call() -> Response:
        body = _body()
        if "templateContext" in body:
            # StartCallRequest has no templateContext; only agent calls take one.
            raise detail_error(400, "templateContext is only accepted by /api/agents/{agent_id}/calls.")
        prior_call_id = request.args.get("priorCallId")
        if prior_call_id:
            if "initialMessages" in body:
                raise detail_error(400, "initialMessages cannot be set together with priorCallId.")
            with state.lock:
                prior = copy.deepcopy(state.get(prior_call_id).request_body)
            body = {**prior, **body}
        return _create(body, agent_id=None, template_context=None)

    @app.post("/api/agents/<agent_id>/calls")
    def create_agent_call(agent_id: str) -> Response:
        try:
            agent_uuid = str(uuid.UUID(agent_id))
        except ValueError:
            raise detail_error(404, "Not found.") from None
        body = _body()
        template_context = body.get("templateContext")
        if template_context is not None and not isinstance(template_context, dict):
            raise detail_error(400, "templateContext must be an object.")
        return _create(body, agent_id=agent_uuid, template_context=template_context)

    @app.get("/api/calls/<call_id>")
    def get_call(call_id: str) -> Response:
        with state.lock:
            return jsonify(copy.deepcopy(state.get(call_id).call))

    @app.get("/api/calls/<call_id>/messages")
    def list_messages(call_id: str) -> Response:
        with state.lock:
            messages = copy.deepcopy(state.get(call_id).messages)
        cursor = request.args.get("cursor")
        offset = decode_cursor(cursor) if cursor else 0
        size = page_size()
        page = messages[offset : offset + size]
        next_cursor = encode_cursor(offset + size) if offset + size < len(messages) else None
        previous_cursor = encode_cursor(max(offset - size, 0)) if offset > 0 else None
        return jsonify(
            {
                "next": page_url(next_cursor),
                "previous": page_url(previous_cursor),
                "results": page,
                "total": len(messages),
            }
        )

    @app.get("/api/calls/<call_id>/recording")
    def get_recording(call_id: str) -> Response:
        with state.lock:
            call = copy.deepcopy(state.get(call_id).call)
            mode = state.settings.recording_mode
        if not call["recordingEnabled"]:
            raise detail_error(404, "Recording not enabled for this call.")
        if call["ended"] is None:
            raise detail_error(404, "Recording not available yet.")
        if mode == "direct":
            return _wav_response()
        expires = int(time.time()) + STORAGE_URL_TTL_S
        query = urlencode({"expires": expires, "signature": state.storage_signature(call_id, expires)})
        location = f"{request.host_url}_sim/storage/{call_id}.wav?{query}"
        # The real API answers with an empty text/html 302 to a short-lived signed URL.
        return Response("", status=302, headers={"Location": location}, mimetype="text/html")

    @app.post("/api/calls/<call_id>/send_data_message")
    def send_data_message(call_id: str) -> Response:
        body = _body()
        message_type = body.get("type")
        if not isinstance(message_type, str) or not message_type:
            raise detail_error(400, "type is required.")
        with state.lock:
            sim_call = state.get(call_id)
            if sim_call.call["ended"] is not None:
                raise detail_error(422, "Call is not active.")
            sim_call.data_messages.append(copy.deepcopy(body))
            events = (
                _end_locked(sim_call, reason="agent_hangup", billed_duration=None, message_count=None)
                if message_type == "hang_up"
                else ()
            )
        if events:
            state.fire(*events)
        return Response(status=204)

    def _end_locked(
        sim_call: _SimCall, *, reason: str, billed_duration: str | None, message_count: int | None
    ) -> tuple[tuple[str, dict[str, Any]], ...]:
        """End the call (caller holds state.lock); returns the webhooks to fire."""
        call = sim_call.call
        now = utc_now_iso()
        if billed_duration is None:
            seconds = (
                (_parse_iso(now) - _parse_iso(call["joined"])).total_seconds() if call["joined"] else 0.0
            )
            billed_duration = format_duration(seconds)
        call["ended"] = now
        call["endReason"] = reason
        call["billedDuration"] = billed_duration
        call["billingStatus"] = (
            "BILLING_STATUS_BILLED"
            if _duration_seconds(billed_duration) > 0
            else "BILLING_STATUS_FREE_ZERO_EFFECTIVE_DURATION"
        )
        call["shortSummary"] = "Simulated call."
        call["summary"] = f"Simulated call {call['callId']} ended ({reason})."
        count = state.settings.transcript_messages if message_count is None else message_count
        sim_call.messages = transcript(call["callId"], count)
        ended = copy.deepcopy(call)
        return (("call.ended", ended), ("call.billed", copy.deepcopy(ended)))

    # -- sim control ------------------------------------------------------------------

    @app.post("/_sim/calls/<call_id>/join")
    def sim_join(call_id: str) -> Response:
        with state.lock:
            sim_call = state.get(call_id)
            if sim_call.call["ended"] is not None:
                raise detail_error(409, "Call already ended.")
            if sim_call.call["joined"] is None:
                sim_call.call["joined"] = utc_now_iso()
            snapshot = copy.deepcopy(sim_call.call)
            emit_joined = state.settings.emit_joined
        if emit_joined:
            state.fire(("call.joined", snapshot))
        return jsonify(snapshot)

    @app.post("/_sim/calls/<call_id>/end")
    def sim_end(call_id: str) -> Response:
        body = _body()
        reason = body.get("endReason", "hangup")
        if reason not in END_REASONS:
            raise detail_error(400, f"endReason must be one of {', '.join(END_REASONS)}.")
        billed = body.get("billedDuration")
        if billed is not None and (not isinstance(billed, str) or not DURATION_RE.match(billed)):
            raise detail_error(400, "billedDuration must be a duration string such as '42s'.")
        message_count = body.get("messageCount")
        if message_count is not None and (
            not isinstance(message_count, int) or isinstance(message_count, bool) or message_count < 0
        ):
            raise detail_error(400, "messageCount must be a non-negative integer.")
        with state.lock:
            sim_call = state.get(call_id)
            if sim_call.call["ended"] is not None:
                raise detail_error(409, "Call already ended.")
            events = _end_locked(
                sim_call, reason=reason, billed_duration=billed, message_count=message_count
            )
            snapshot = copy.deepcopy(sim_call.call)
        state.fire(*events)
        return jsonify(snapshot)

    @app.get("/_sim/calls")
    def sim_calls() -> Response:
        with state.lock:
            return jsonify({"calls": [c.sim_view() for c in state.calls.values()]})

    @app.get("/_sim/calls/<call_id>")
    def sim_call(call_id: str) -> Response:
        with state.lock:
            return jsonify(state.get(call_id).sim_view())

    @app.get("/_sim/webhooks")
    def sim_webhooks() -> Response:
        with state.lock:
            return jsonify({"attempts": copy.deepcopy(state.webhook_attempts)})

    @app.get("/_sim/storage-requests")
    def sim_storage_requests() -> Response:
        with state.lock:
            return jsonify({"requests": copy.deepcopy(state.storage_requests)})

    @app.get("/_sim/storage/<call_id>.wav")
    def sim_storage(call_id: str) -> Response:
        expires_raw = request.args.get("expires", "")
        signature = request.args.get("signature", "")
        valid = expires_raw.isdigit() and hmac.compare_digest(
            signature, state.storage_signature(call_id, int(expires_raw))
        )
        expired = valid and int(expires_raw) < time.time()
        with state.lock:
            state.storage_requests.append(
                {
                    "time": utc_now_iso(),
                    "path": request.path,
                    "callId": call_id,
                    # The whole point: prove clients do not forward the API key here.
                    "had_api_key": bool(
                        request.headers.get("X-API-Key") or request.headers.get("X-Unsafe-API-Key")
                    ),
                    "had_auth": bool(request.headers.get("Authorization")),
                    "signature_valid": valid and not expired,
                }
            )
            known = call_id in state.calls
        if not valid or expired or not known:
            # GCS answers a bad or expired signed URL with 403 (an XML body there).
            return Response("AccessDenied", status=403, mimetype="text/plain")
        return _wav_response()

    install_tool_invoker(app, state)  # invoking a call's HTTP tools: telephony/sim/tool_invoker.py
    return app
