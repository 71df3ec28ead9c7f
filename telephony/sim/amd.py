"""Answering-machine detection in the carrier simulator: who picks up, per callee number.

A table maps callee numbers to a verdict (``human``, ``machine``, ``fax``, ``unknown``;
numbers not in it get the default, ``human``). A dial that asks for asynchronous
detection (Twilio ``AsyncAmdStatusCallback``, Telnyx ``answering_machine_detection``,
Plivo ``machine_detection_url``) gets the carrier's signed callbacks for the callee's
verdict, and the commands a service then sends are answered the way the carrier would:

- Twilio: ``AnsweredBy`` (human, machine_end_beep, fax, unknown) to the AMD callback, form
  signed with X-Twilio-Signature by the auth token the dial authenticated with. A call
  update ending the call (``Status=completed``, or TwiML with ``<Hangup/>``) is followed
  by the ``completed`` status callback.
- Telnyx: ``call.machine.premium.detection.ended`` (human_residence, machine, fax_detected,
  not_sure), then for a machine ``call.machine.premium.greeting.ended`` (beep_detected),
  JSON signed with Ed25519 by the simulator's own key (its public key: ``GET /_sim/amd``;
  store it as the agency's Telnyx ``public_key``). ``speak`` / ``playback_start`` are
  followed by ``call.speak.ended`` / ``call.playback.ended``, ``hangup`` by ``call.hangup``.
- Plivo: ``Machine=true|false`` (Plivo tells no fax and has no "unknown": a fax is a
  machine, unknown sends nothing) to machine_detection_url, signed V3 by the dial's auth
  token. A transfer (``POST .../Call/<uuid>/`` with ``aleg_url``) fetches that URL (signed)
  and keeps its XML; XML or a ``DELETE`` ending the call is followed by the hangup_url.

Delivery is held until ``POST /_sim/amd/deliver`` (tests: it answers what the service
said to each callback), or made by itself ``auto_ms`` after it is due (``make sim``).
``deliver_to`` replaces the scheme and host of callback URLs when sending (the service's
PUBLIC_BASE_URL may not be reachable from here); the signature still covers the URL as
the service gave it, exactly as behind a tunnel.

Control: ``POST /_sim/amd {"verdicts": {"+14155550123": "machine"}, "default": "human",
"deliver_to": "http://127.0.0.1:8000", "auto_ms": 1500}``, ``GET /_sim/amd``,
``POST /_sim/amd/deliver``, ``POST /_sim/amd/replay`` (sends everything delivered so far
again, byte for byte); ``POST /_sim/reset`` clears it. Secrets (the dial's auth
token) are kept in memory only for signing, never logged nor shown.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, Response, jsonify, request

from telephony.sim.common import SimError, basic_auth, form_to_dict, utc_now_iso
from telephony.sim.delivery import delivered_to

VERDICTS = ("human", "machine", "fax", "unknown")
TWILIO_ANSWERED_BY = {"human": "human", "machine": "machine_end_beep", "fax": "fax", "unknown": "unknown"}
TELNYX_RESULTS = {"human": "human_residence", "machine": "machine", "fax": "fax_detected", "unknown": "not_sure"}
MAX_DELIVERIES_PER_CALL = 200  # one /_sim/amd/deliver: a bound, not a target


@dataclass
class Callback:
    """One request the simulated carrier owes the service."""

    carrier: str
    call_id: str
    kind: str  # amd, status, event, fetch
    url: str
    form: dict[str, str] | None = None  # Twilio and Plivo: form-encoded
    event: dict[str, Any] | None = None  # Telnyx: JSON
    secret: str = field(default="", repr=False)  # the token signing it (Twilio, Plivo)
    on_response: Callable[[requests.Response], None] | None = None


class AmdSim:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.telnyx_key = Ed25519PrivateKey.generate()
        # Plivo's Transfer a Call for anything but a live transfer (a voicemail's XML): the one
        # route for that API is sim/transfers.py's, which hands these over.
        self.plivo_transfer: Callable[[str, str], Response] | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.verdicts: dict[str, str] = {}
            self.default = "human"
            self.deliver_to: str | None = None
            self.auto_ms: int | None = None
            self.pending: list[Callback] = []
            self.delivered: list[dict[str, Any]] = []
            self.sequence: dict[str, int] = {}
            # (carrier, call id) -> (account id, auth token) the dial authenticated with:
            # what the carrier signs that call's callbacks with (memory only).
            self.accounts: dict[tuple[str, str], tuple[str, str]] = {}
            # Every request sent, exactly as sent, for replay (a carrier's retry or an attacker's copy).
            self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    @property
    def telnyx_public_key(self) -> str:
        raw = self.telnyx_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def verdict_for(self, number: Any) -> str:
        text = str(number or "")
        for candidate in (text, f"+{text}"):  # Plivo numbers come without "+"
            if candidate in self.verdicts:
                return self.verdicts[candidate]
        return self.default

    # -- hooks called by the carrier simulator (inside its request handlers) ---------------

    def on_dial(self, call: Any) -> None:
        """A call was placed: owe the AMD callbacks its callee's verdict calls for."""
        params = call.params
        with self.lock:
            credentials = basic_auth()
            if credentials is not None:
                self.accounts[(call.carrier, call.call_id)] = credentials
            verdict = self.verdict_for(call.to)
            if call.carrier == "twilio" and params.get("AsyncAmdStatusCallback"):
                self._queue(Callback("twilio", call.call_id, "amd", params["AsyncAmdStatusCallback"],
                                     secret=self._token(call),
                                     form={"CallSid": call.call_id, "AccountSid": self._user(call),
                                           "CallStatus": "in-progress", "AnsweredBy": TWILIO_ANSWERED_BY[verdict],
                                           "MachineDetectionDuration": "2150"}))
            elif call.carrier == "telnyx" and params.get("answering_machine_detection") not in (None, "disabled"):
                premium = str(params["answering_machine_detection"]).startswith("premium")
                prefix = "call.machine.premium" if premium else "call.machine"
                result = TELNYX_RESULTS[verdict] if premium else {"fax": "machine", "unknown": "not_sure"}.get(
                    verdict, verdict)
                self._queue_telnyx(call, f"{prefix}.detection.ended", result=result)
                if verdict == "machine":
                    self._queue_telnyx(call, f"{prefix}.greeting.ended", result="beep_detected")
            elif call.carrier == "plivo" and params.get("machine_detection_url") and verdict != "unknown":
                self._queue(Callback("plivo", call.call_id, "amd", params["machine_detection_url"],
                                     secret=self._token(call),
                                     form=_plivo_form(call, {"Machine": "false" if verdict == "human" else "true",
                                                             "IfMachine": "continue", "Event": "MachineDetection",
                                                             "CallStatus": "in-progress"})))

    def on_twilio_update(self, call: Any, params: dict[str, Any]) -> None:
        twiml = str(params.get("Twiml") or "")
        if params.get("Status") == "completed" or "<Hangup" in twiml:
            call.status = "completed"
            url = call.params.get("StatusCallback")
            if url:
                with self.lock:
                    sequence = self.sequence.get(call.call_id, 3)
                    self.sequence[call.call_id] = sequence + 1
                    self._queue(Callback("twilio", call.call_id, "status", url, secret=self._token(call), form={
                        "CallSid": call.call_id, "AccountSid": self._user(call), "CallStatus": "completed",
                        "SequenceNumber": str(sequence), "CallDuration": "9", "Direction": "outbound-api"}))

    def on_telnyx_action(self, call: Any, action: str) -> None:
        with self.lock:
            if action == "speak":
                self._queue_telnyx(call, "call.speak.ended", status="completed")
            elif action in ("playback_start", "start_playback"):
                self._queue_telnyx(call, "call.playback.ended", status="completed")
            elif action == "hangup":
                self._queue_telnyx(call, "call.hangup", hangup_cause="normal_clearing", hangup_source="caller",
                                   start_time=call.created)

    def on_plivo_hangup(self, call: Any) -> None:
        url = call.params.get("hangup_url")
        if url:
            with self.lock:
                self._queue(Callback("plivo", call.call_id, "status", url, secret=self._token(call),
                                     form=_plivo_form(call, {"CallStatus": "completed", "Duration": "9",
                                                             "BillDuration": "60", "Event": "Hangup"})))

    def _token(self, call: Any) -> str:
        """The auth token the call was dialled with (caller holds the lock)."""
        return self.accounts.get((call.carrier, call.call_id), ("", ""))[1]

    def _user(self, call: Any) -> str:
        return self.accounts.get((call.carrier, call.call_id), ("", ""))[0]

    # -- queueing and delivery ---------------------------------------------------------------

    def _queue_telnyx(self, call: Any, event_type: str, **payload: Any) -> None:
        url = call.params.get("webhook_url")
        if not url:
            return
        event = {"data": {"id": str(uuid.uuid4()), "event_type": event_type, "occurred_at": utc_now_iso(),
                          "record_type": "event",
                          "payload": {"call_control_id": call.call_id,
                                      "connection_id": call.params.get("connection_id"), "from": call.from_,
                                      "to": call.to, "direction": "outgoing", **payload}},
                 "meta": {"attempt": 1, "delivered_to": url}}
        self._queue(Callback("telnyx", call.call_id, "event", url, event=event))

    def _queue(self, callback: Callback) -> None:
        """Caller holds the lock."""
        self.pending.append(callback)
        if self.auto_ms is not None:
            timer = threading.Timer(self.auto_ms / 1000.0, self.deliver)
            timer.daemon = True
            timer.start()

    def deliver(self) -> list[dict[str, Any]]:
        """Send every callback owed (and those the answers cause), in order."""
        sent: list[dict[str, Any]] = []
        while len(sent) < MAX_DELIVERIES_PER_CALL:
            with self.lock:
                if not self.pending:
                    break
                callback = self.pending.pop(0)
                target = self._target(callback.url)
            record: dict[str, Any] = {"carrier": callback.carrier, "call_id": callback.call_id, "kind": callback.kind,
                      "path": urlsplit(callback.url).path, "time": utc_now_iso()}
            if callback.event is not None:
                record["event_type"] = callback.event["data"]["event_type"]
            try:
                response = self._send(callback, target)
                record["status"] = response.status_code
                if callback.on_response is not None:
                    callback.on_response(response)
            except requests.RequestException as exc:
                record["status"] = None
                record["error"] = exc.__class__.__name__
            sent.append(record)
            with self.lock:
                self.delivered.append(record)
        return sent

    def _target(self, url: str) -> str:
        return delivered_to(url, self.deliver_to)

    def _send(self, callback: Callback, target: str) -> requests.Response:
        if callback.event is not None:
            body = json.dumps(callback.event, separators=(",", ":")).encode()
            stamp = str(int(time.time()))
            signature = base64.b64encode(self.telnyx_key.sign(stamp.encode() + b"|" + body)).decode()
            headers = {"Content-Type": "application/json", "telnyx-signature-ed25519": signature,
                       "telnyx-timestamp": stamp}
        else:
            form = callback.form or {}
            if callback.carrier == "twilio":
                headers = {"X-Twilio-Signature": _twilio_signature(callback.secret, callback.url, form)}
            else:
                headers = _plivo_headers(callback.secret, callback.url, form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urlencode(form).encode()
        with self.lock:
            self.sent.append((target, body, headers))
        return requests.post(target, data=body, headers=headers, timeout=10)

    def replay(self) -> list[int]:
        """Send every request sent so far once more, byte for byte (same signature and
        timestamp): what a carrier's retry, or someone who copied them, would send."""
        with self.lock:
            sent = list(self.sent)
        return [requests.post(target, data=body, headers=headers, timeout=10).status_code
                for target, body, headers in sent]


# -- signing exactly as each carrier does -------------------------------------------------------


def _twilio_signature(token: str, url: str, form: dict[str, str]) -> str:
    payload = url + "".join(name + form[name] for name in sorted(form))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def _plivo_headers(token: str, url: str, form: dict[str, str]) -> dict[str, str]:
    nonce = "".join(secrets.choice("0123456789") for _ in range(20))
    base = url.split("?", 1)[0]
    payload = base + "?" + "".join(name + form[name] for name in sorted(form)) + "." + nonce
    signature = base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha256).digest()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


def _plivo_form(call: Any, extra: dict[str, str]) -> dict[str, str]:
    return {"CallUUID": call.call_id, "RequestUUID": call.call_id, "ALegUUID": call.call_id,
            "ALegRequestUUID": call.call_id, "From": str(call.from_), "To": str(call.to),
            "Direction": "outbound", **extra}


# -- installing it into the carrier simulator ----------------------------------------------------


def install(app: Flask) -> AmdSim:
    """Register the control endpoints and the Plivo transfer route; returns the hooks."""
    sim = AmdSim()
    app.extensions["carriers_sim_amd"] = sim

    @app.post("/_sim/amd")
    def _configure() -> Response:
        body = request.get_json(silent=True)
        verdicts = body.get("verdicts") or {} if isinstance(body, dict) else None
        default = body.get("default") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(verdicts, dict) or any(
                v not in VERDICTS for v in [*verdicts.values(), *([default] if default is not None else [])]):
            raise SimError(400, {"error": f"send {{\"verdicts\": {{number: verdict}}}}; verdicts are "
                                          f"{', '.join(VERDICTS)}"})
        with sim.lock:
            sim.verdicts.update({str(k): str(v) for k, v in verdicts.items()})
            if default is not None:
                sim.default = default
            if "deliver_to" in body:
                sim.deliver_to = body["deliver_to"] or None
            if "auto_ms" in body:
                sim.auto_ms = int(body["auto_ms"]) if body["auto_ms"] is not None else None
        return _state()

    @app.get("/_sim/amd")
    def _state() -> Response:
        with sim.lock:
            return jsonify({"verdicts": dict(sim.verdicts), "default": sim.default, "deliver_to": sim.deliver_to,
                            "auto_ms": sim.auto_ms, "telnyx_public_key": sim.telnyx_public_key,
                            "pending": len(sim.pending), "delivered": list(sim.delivered)})

    @app.post("/_sim/amd/deliver")
    def _deliver() -> Response:
        return jsonify({"delivered": sim.deliver()})

    @app.post("/_sim/amd/replay")
    def _replay() -> Response:
        return jsonify({"statuses": sim.replay()})

    def plivo_transfer(auth_id: str, call_uuid: str) -> Response:
        """Plivo's Transfer a Call: the A leg fetches ``aleg_url`` for new XML."""
        credentials = basic_auth()
        if credentials is None or credentials[0] != auth_id or not credentials[1]:
            raise SimError(401, {"api_id": str(uuid.uuid4()), "error": "Authentication failed"})
        body = request.get_json(silent=True) or form_to_dict(request.form)
        state = app.extensions["carriers_sim"]
        with state.lock:
            call = state.touch("plivo", call_uuid)
            call.updates.append({"time": utc_now_iso(), "action": "transfer", "params": dict(body)})
        url = body.get("aleg_url")
        if url:
            def keep_xml(response: requests.Response) -> None:
                with state.lock:
                    call.updates.append({"time": utc_now_iso(), "action": "xml", "xml": response.text})
                if "<Hangup" in response.text:
                    sim.on_plivo_hangup(call)

            with sim.lock:
                sim.accounts.setdefault(("plivo", call_uuid), credentials)
                sim._queue(Callback("plivo", call_uuid, "fetch", url, secret=credentials[1],
                                    form=_plivo_form(call, {"CallStatus": "in-progress", "Event": "Transfer"}),
                                    on_response=keep_xml))
        response = jsonify({"api_id": str(uuid.uuid4()), "message": "call transferred"})
        response.status_code = 202
        return response

    sim.plivo_transfer = plivo_transfer
    return sim
