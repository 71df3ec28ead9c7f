"""A local simulator of the Twilio, Telnyx and Plivo call APIs on one server.

Each carrier lives on its real path, so the official SDKs work unchanged once their
base URL points here (see ``telephony.carriers.sdk``):

- Twilio  ``POST /2010-04-01/Accounts/<AccountSid>/Calls.json`` (form, Basic auth),
          ``POST|GET /2010-04-01/Accounts/<AccountSid>/Calls/<CallSid>.json``.
- Telnyx  ``POST /v2/calls`` (JSON, Bearer), ``POST /v2/calls/<id>/actions/<action>``;
          ``command_id`` dedupe for 60 s.
- Plivo   ``POST /v1/Account/<auth_id>/Call/`` (JSON, Basic auth),
          ``DELETE /v1/Account/<auth_id>/Call/<uuid>/``.
- Each account's phone numbers and where their webhooks point: ``sim/numbers.py``.

Credentials: by default any non-empty secret is accepted (the Basic-auth username must
still equal the account id in the path). Pass ``twilio_credentials`` /
``telnyx_api_keys`` / ``plivo_credentials`` to check secrets too, e.g. to test the
SDKs' authentication errors. Secrets are compared, never stored in logs.

Sim-only: ``GET /_sim/calls`` lists calls placed or touched (no credentials), plus the
shared control API from ``common``.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, Mapping

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from telephony.sim import amd as amd_sim
from telephony.sim import numbers as sim_numbers
from telephony.sim.common import (
    Injector,
    SimError,
    basic_auth,
    form_to_dict,
    install_control_api,
    json_object_body,
    utc_now_iso,
)
from telephony.sim.transfers import install_carrier_transfers

TWILIO_PREFIX = "/2010-04-01/"
TELNYX_PREFIX = "/v2/"
PLIVO_PREFIX = "/v1/Account/"
TELNYX_DEDUPE_WINDOW_S = 60.0
TWILIO_CALL_SID_RE = re.compile(r"^CA[0-9a-f]{32}$")

# Body fields surfaced at the top level of /_sim/calls entries (as snake_case).
_TWILIO_FIELDS = {
    "Twiml": "twiml",
    "Url": "url",
    "Method": "method",
    "ApplicationSid": "application_sid",
    "StatusCallback": "status_callback",
    "StatusCallbackEvent": "status_callback_event",
    "StatusCallbackMethod": "status_callback_method",
    "Timeout": "timeout",
    "Record": "record",
    "MachineDetection": "machine_detection",
}
_TELNYX_FIELDS = (
    "connection_id",
    "stream_url",
    "stream_track",
    "stream_codec",
    "stream_bidirectional_mode",
    "stream_bidirectional_codec",
    "stream_bidirectional_sampling_rate",
    "stream_bidirectional_target_legs",
    "webhook_url",
    "client_state",
    "command_id",
    "timeout_secs",
)
_PLIVO_FIELDS = (
    "answer_url",
    "answer_method",
    "hangup_url",
    "ring_url",
    "fallback_url",
    "callback_url",
    "time_limit",
    "ring_timeout",
)


def _rfc2822_now() -> str:
    # Twilio's date format, which the SDK parses with deserialize.rfc2822_datetime.
    return format_datetime(datetime.now(timezone.utc))


def _secret_digest(secret: str) -> str:
    """A stable, non-reversible key for per-credential state (Telnyx dedupe)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _secret_ok(expected: str | None, given: str) -> bool:
    if expected is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


# -- error bodies shaped like each carrier's ---------------------------------------------


def _twilio_error(status: int, code: int, message: str) -> SimError:
    return SimError(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


def _telnyx_error(status: int, code: str, title: str, detail: str, pointer: str | None = None) -> SimError:
    error: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer:
        error["source"] = {"pointer": pointer}
    return SimError(status, {"errors": [error]})


def _plivo_error(status: int, message: str) -> SimError:
    return SimError(status, {"api_id": str(uuid.uuid4()), "error": message})


def _error_for(path: str, status: int, message: str) -> SimError:
    if path.startswith(TWILIO_PREFIX):
        code = {404: 20404, 429: 20429, 503: 20503}.get(status, 20500 if status >= 500 else 20001)
        return _twilio_error(status, code, message)
    if path.startswith(TELNYX_PREFIX):
        telnyx_code = {404: "10005", 429: "10011", 503: "10012"}.get(status, "10007")
        return _telnyx_error(status, telnyx_code, message, message)
    return _plivo_error(status, message)


def _injected_error_body(path: str, status: int, mode: str) -> Any:
    message = {
        "rate_limit": "Too Many Requests",
        "unavailable": "Service Unavailable",
    }.get(mode, "Internal Server Error" if status >= 500 else "Simulated error")
    return _error_for(path, status, message).body


# -- state --------------------------------------------------------------------------------


@dataclass
class CarrierCall:
    carrier: str
    call_id: str
    to: Any
    from_: Any
    status: str
    direction: str
    params: dict[str, Any]
    fields: dict[str, Any]
    created: str = field(default_factory=utc_now_iso)
    updates: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] | None = None  # Twilio's Call resource, re-served on update

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "carrier": self.carrier,
                "id": self.call_id,
                "to": self.to,
                "from": self.from_,
                "status": self.status,
                "direction": self.direction,
                "created": self.created,
                **self.fields,
                "params": self.params,
                "updates": self.updates,
            }
        )


class _CarrierState:
    def __init__(
        self,
        *,
        twilio_credentials: Mapping[str, str] | None,
        telnyx_api_keys: set[str] | None,
        plivo_credentials: Mapping[str, str] | None,
    ) -> None:
        self.twilio_credentials = dict(twilio_credentials) if twilio_credentials is not None else None
        self.telnyx_api_keys = frozenset(telnyx_api_keys) if telnyx_api_keys is not None else None
        self.plivo_credentials = dict(plivo_credentials) if plivo_credentials is not None else None
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], CarrierCall] = {}
        # (sha256(api key), command kind, command_id) -> (expiry monotonic, response body)
        self.telnyx_commands: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.telnyx_commands.clear()

    def add(self, call: CarrierCall) -> None:
        self.calls[(call.carrier, call.call_id)] = call

    def touch(self, carrier: str, call_id: str) -> CarrierCall:
        """The call with this id, or a placeholder for a call we did not place (an
        inbound call arrives by webhook, so the sim never saw it being created)."""
        found = self.calls.get((carrier, call_id))
        if found is None:
            found = CarrierCall(
                carrier=carrier,
                call_id=call_id,
                to=None,
                from_=None,
                status="in-progress",
                direction="inbound",
                params={},
                fields={},
            )
            self.add(found)
        return found


def create_app(
    *,
    latency_ms: int = 0,
    twilio_credentials: Mapping[str, str] | None = None,
    telnyx_api_keys: set[str] | None = None,
    plivo_credentials: Mapping[str, str] | None = None,
) -> Flask:
    """Build the carriers simulator.

    ``twilio_credentials``: AccountSid -> auth token; ``plivo_credentials``: auth id ->
    auth token; ``telnyx_api_keys``: accepted API keys. ``None`` accepts any non-empty
    secret.
    """
    app = Flask("telephony.sim.carriers")
    state = _CarrierState(
        twilio_credentials=twilio_credentials,
        telnyx_api_keys=telnyx_api_keys,
        plivo_credentials=plivo_credentials,
    )
    injector = Injector(latency_ms=latency_ms)
    app.extensions["carriers_sim"] = state
    numbers = sim_numbers.NumbersState()  # phone numbers and applications per account (sim/numbers.py)
    amd = amd_sim.install(app)  # answering-machine verdicts per callee number (sim/amd.py)

    def _reset() -> None:
        state.reset()
        numbers.reset()
        amd.reset()

    install_control_api(
        app,
        injector,
        error_body=_injected_error_body,
        on_reset=_reset,
        default_latency_ms=latency_ms,
    )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return _error_for(request.path, exc.code or 500, exc.name).to_response()

    # -- Twilio ---------------------------------------------------------------------------

    def _twilio_authenticate(account_sid: str) -> None:
        creds = basic_auth()
        ok = creds is not None and creds[0] == account_sid and bool(creds[1])
        if ok and state.twilio_credentials is not None:
            ok = _secret_ok(state.twilio_credentials.get(account_sid), creds[1])  # type: ignore[index]
        if not ok:
            raise _twilio_error(401, 20003, "Authenticate")

    def _twilio_resource(account_sid: str, sid: str, to: Any, from_: Any, direction: str) -> dict[str, Any]:
        now = _rfc2822_now()
        uri = f"/2010-04-01/Accounts/{account_sid}/Calls/{sid}.json"
        base = uri[: -len(".json")]
        return {
            "sid": sid,
            "date_created": now,
            "date_updated": now,
            "parent_call_sid": None,
            "account_sid": account_sid,
            "to": to,
            "to_formatted": to,
            "from": from_,
            "from_formatted": from_,
            "phone_number_sid": None,
            "status": "queued",
            "start_time": None,
            "end_time": None,
            "duration": None,
            "price": None,
            "price_unit": "USD",
            "direction": direction,
            "answered_by": None,
            "api_version": "2010-04-01",
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {
                "notifications": f"{base}/Notifications.json",
                "recordings": f"{base}/Recordings.json",
                "payments": f"{base}/Payments.json",
                "events": f"{base}/Events.json",
                "siprec": f"{base}/Siprec.json",
                "streams": f"{base}/Streams.json",
                "transcriptions": f"{base}/Transcriptions.json",
                "user_defined_message_subscriptions": f"{base}/UserDefinedMessageSubscriptions.json",
                "user_defined_messages": f"{base}/UserDefinedMessages.json",
            },
        }

    @app.post("/2010-04-01/Accounts/<account_sid>/Calls.json")
    def twilio_create_call(account_sid: str) -> Response:
        _twilio_authenticate(account_sid)
        params = form_to_dict(request.form)
        if not params.get("To"):
            raise _twilio_error(400, 21201, "No 'To' number is specified")
        if not params.get("From"):
            raise _twilio_error(400, 21213, "No 'From' number is specified")
        if not (params.get("Url") or params.get("Twiml") or params.get("ApplicationSid")):
            raise _twilio_error(400, 21205, "Url parameter is required (or Twiml or ApplicationSid)")
        sid = "CA" + secrets.token_hex(16)
        resource = _twilio_resource(account_sid, sid, params["To"], params["From"], "outbound-api")
        call = CarrierCall(
            carrier="twilio",
            call_id=sid,
            to=params["To"],
            from_=params["From"],
            status="queued",
            direction="outbound-api",
            params=params,
            fields={name: params.get(key) for key, name in _TWILIO_FIELDS.items()},
            resource=resource,
        )
        with state.lock:
            state.add(call)
        amd.on_dial(call)
        response = jsonify(resource)
        response.status_code = 201
        return response

    @app.route("/2010-04-01/Accounts/<account_sid>/Calls/<call_sid>.json", methods=["GET", "POST"])
    def twilio_call(account_sid: str, call_sid: str) -> Response:
        _twilio_authenticate(account_sid)
        if not TWILIO_CALL_SID_RE.match(call_sid):
            raise _twilio_error(
                404, 20404, f"The requested resource {request.path} was not found"
            )
        params = form_to_dict(request.form) if request.method == "POST" else {}
        new_status = params.get("Status")
        if new_status is not None and new_status not in ("completed", "canceled"):
            raise _twilio_error(400, 21218, "Invalid Status. Allowed values: completed, canceled")
        with state.lock:
            call = state.touch("twilio", call_sid)
            if call.resource is None:
                call.resource = _twilio_resource(account_sid, call_sid, None, None, "inbound")
                call.resource["status"] = call.status
            if request.method == "POST":
                call.updates.append({"time": utc_now_iso(), "params": params})
                if new_status:
                    call.status = new_status
                    call.resource["status"] = new_status
                    call.resource["end_time"] = _rfc2822_now()
                call.resource["date_updated"] = _rfc2822_now()
                amd.on_twilio_update(call, params)
            resource = copy.deepcopy(call.resource)
        return jsonify(resource)

    # -- Telnyx ---------------------------------------------------------------------------

    def _telnyx_authenticate() -> str:
        """Returns a digest identifying the API key (for per-account dedupe)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        ok = scheme.lower() == "bearer" and bool(token)
        if ok and state.telnyx_api_keys is not None:
            ok = any(_secret_ok(key, token) for key in state.telnyx_api_keys)
        if not ok:
            raise _telnyx_error(
                401, "10009", "Authentication failed", "Could not understand the provided credentials."
            )
        return _secret_digest(token)

    def _telnyx_body() -> dict[str, Any]:
        try:
            return json_object_body()
        except ValueError as exc:
            raise _telnyx_error(400, "10015", "Bad request", str(exc)) from exc

    def _telnyx_dedupe(account: str, kind: str,
                       body: dict[str, Any]) -> tuple[tuple[str, str, str] | None, dict[str, Any] | None]:
        """Telnyx ignores commands whose command_id repeats within 60 s. Returns the
        dedupe key and, for a repeat, the first command's response (caller holds lock)."""
        command_id = body.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            return None, None
        now = time.monotonic()
        for key in [k for k, (expires, _) in state.telnyx_commands.items() if expires <= now]:
            del state.telnyx_commands[key]
        key = (account, kind, command_id)
        previous = state.telnyx_commands.get(key)
        return key, (copy.deepcopy(previous[1]) if previous else None)

    @app.post("/v2/calls")
    def telnyx_dial() -> Response:
        account = _telnyx_authenticate()
        body = _telnyx_body()
        for name in ("connection_id", "to", "from"):
            if not body.get(name):
                raise _telnyx_error(
                    422, "10015", "Invalid parameter", f"The '{name}' parameter is required.", f"/{name}"
                )
        with state.lock:
            key, previous = _telnyx_dedupe(account, "dial", body)
            if previous is not None:
                return jsonify(previous)
            data: dict[str, Any] = {
                "call_control_id": "v3:" + secrets.token_urlsafe(24),
                "call_leg_id": str(uuid.uuid4()),
                "call_session_id": str(uuid.uuid4()),
                # Dialling is asynchronous: Telnyx documents is_alive as always false here.
                "is_alive": False,
                "record_type": "call",
            }
            if body.get("client_state"):
                data["client_state"] = body["client_state"]
            response_body = {"data": data}
            state.add(
                CarrierCall(
                    carrier="telnyx",
                    call_id=data["call_control_id"],
                    to=body["to"],
                    from_=body["from"],
                    status="initiated",
                    direction="outgoing",
                    params=copy.deepcopy(body),
                    fields={name: body.get(name) for name in _TELNYX_FIELDS},
                )
            )
            if key is not None:
                state.telnyx_commands[key] = (time.monotonic() + TELNYX_DEDUPE_WINDOW_S, response_body)
            amd.on_dial(state.calls[("telnyx", data["call_control_id"])])
        return jsonify(response_body)

    @app.post("/v2/calls/<call_control_id>/actions/<action>")
    def telnyx_action(call_control_id: str, action: str) -> Response:
        account = _telnyx_authenticate()
        if not re.fullmatch(r"[a-z_]+", action):
            raise _telnyx_error(404, "10005", "Resource not found", "Unknown action.")
        body = _telnyx_body()
        result = {"data": {"result": "ok"}}
        with state.lock:
            key, previous = _telnyx_dedupe(account, f"{call_control_id}/{action}", body)
            if previous is not None:
                return jsonify(previous)
            call = state.touch("telnyx", call_control_id)
            call.updates.append({"time": utc_now_iso(), "action": action, "params": copy.deepcopy(body)})
            if action == "answer":
                call.status = "answered"
                # Inbound answers carry the stream settings: surface them like a dial's.
                call.fields.update({name: body[name] for name in _TELNYX_FIELDS if name in body})
            elif action == "hangup":
                call.status = "hangup"
            amd.on_telnyx_action(call, action)
            if key is not None:
                state.telnyx_commands[key] = (time.monotonic() + TELNYX_DEDUPE_WINDOW_S, result)
        return jsonify(result)

    # -- Plivo ----------------------------------------------------------------------------

    def _plivo_authenticate(auth_id: str) -> None:
        creds = basic_auth()
        ok = creds is not None and creds[0] == auth_id and bool(creds[1])
        if ok and state.plivo_credentials is not None:
            ok = _secret_ok(state.plivo_credentials.get(auth_id), creds[1])  # type: ignore[index]
        if not ok:
            raise _plivo_error(401, "Authentication failed")

    @app.post("/v1/Account/<auth_id>/Call/")
    def plivo_create_call(auth_id: str) -> Response:
        _plivo_authenticate(auth_id)
        try:
            body = json_object_body()
        except ValueError as exc:
            raise _plivo_error(400, str(exc)) from exc
        for name in ("from", "to", "answer_url"):
            if not body.get(name):
                raise _plivo_error(400, f"{name} is required")
        destinations = [d for d in str(body["to"]).split("<") if d]
        request_uuids = [str(uuid.uuid4()) for _ in destinations]
        with state.lock:
            for destination, request_uuid in zip(destinations, request_uuids):
                state.add(
                    CarrierCall(
                        carrier="plivo",
                        call_id=request_uuid,
                        to=destination,
                        from_=body["from"],
                        status="queued",
                        direction="outbound",
                        params=copy.deepcopy(body),
                        fields={name: body.get(name) for name in _PLIVO_FIELDS},
                    )
                )
                amd.on_dial(state.calls[("plivo", request_uuid)])
        response = jsonify(
            {
                "api_id": str(uuid.uuid4()),
                "message": "call fired",
                # Several "<"-separated destinations give a list, as Plivo does.
                "request_uuid": request_uuids[0] if len(request_uuids) == 1 else request_uuids,
            }
        )
        response.status_code = 201
        return response

    @app.delete("/v1/Account/<auth_id>/Call/<call_uuid>/")
    def plivo_hangup(auth_id: str, call_uuid: str) -> Response:
        _plivo_authenticate(auth_id)
        with state.lock:
            call = state.touch("plivo", call_uuid)
            call.status = "completed"
            call.updates.append({"time": utc_now_iso(), "action": "hangup"})
            amd.on_plivo_hangup(call)
        return Response(status=204)

    sim_numbers.install(app, numbers, twilio_auth=_twilio_authenticate, telnyx_auth=_telnyx_authenticate,
                        plivo_auth=_plivo_authenticate, error_for=_error_for)

    # -- sim control ----------------------------------------------------------------------

    @app.get("/_sim/calls")
    def sim_calls() -> Response:
        carrier = request.args.get("carrier")
        with state.lock:
            calls = [c.to_json() for c in state.calls.values() if carrier in (None, c.carrier)]
        return jsonify({"calls": calls})

    install_carrier_transfers(app, state)  # transfer legs: telephony/sim/transfers.py
    return app
