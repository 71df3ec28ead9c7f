"""Simulator parts for live call control (transfers), hooked into both simulators.

Carriers (``install_carrier_transfers``): the person's leg of a transfer, with a
controllable outcome per destination.

- Twilio: a call update whose TwiML holds ``<Dial action=...>`` (Number or Sip) starts a
  leg; Plivo: ``POST /v1/Account/<id>/Call/<uuid>/`` (the Call transfer API, aleg_url)
  starts one, and settling it first fetches the aleg_url for its ``<Dial>``; Telnyx: the
  ``transfer`` Call Control action starts one (its ``webhook_url`` gets the events).
- ``POST /_sim/transfers/config {"outcomes": {"+14155550123": "busy"}, "telnyx_signing_key":
  "<base64 Ed25519 private key>"}``: outcome per destination (answer, busy, no-answer,
  fail; unlisted destinations answer), and the key Telnyx events are signed with.
- ``POST /_sim/transfers/settle {"deliver_to": "http://127.0.0.1:8000"}``: play every
  pending leg out: the carrier's callbacks are sent, signed as the carrier signs them
  (Twilio and Plivo with the auth token the redirect request authenticated with), to the
  callback URL, or to ``deliver_to`` with the callback's path (the signature still covers
  the public URL, as behind a proxy). Answers what our service replied to each callback.
- ``GET /_sim/transfers``: every leg (no secrets), with the time its redirect arrived.

Ultravox invoking a call's tool: telephony/sim/tool_invoker.py.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, Response, jsonify, request
from twilio.request_validator import RequestValidator

from telephony.sim.common import SimError, basic_auth, json_object_body, utc_now_iso
from telephony.sim.delivery import also_on_reset, delivered_to

OUTCOMES = ("answer", "busy", "no-answer", "fail", "decline")
WHISPER_PATH = "/whisper"  # the person's leg of a warm transfer answers with our whisper URL
PRESS_RE = re.compile(r"Press (\S)\b")
CALLBACK_TIMEOUT_S = 10.0
# Outcome -> what each carrier reports about the person's leg.
_TWILIO_STATUS = {"answer": "completed", "busy": "busy", "no-answer": "no-answer", "fail": "failed",
                  "decline": "completed"}
_PLIVO_STATUS = _TWILIO_STATUS
_TELNYX_CAUSE = {"answer": "normal_clearing", "busy": "user_busy", "no-answer": "timeout", "fail": "unspecified",
                 "decline": "normal_clearing"}


@dataclass
class TransferLeg:
    carrier: str
    call_id: str  # the caller's call; for a warm leg, the person's leg itself
    received: float  # time.time() when the redirect request arrived
    kind: str = "dial"  # dial (cold: the caller's call dials), warm (the person's own leg), fetch (Plivo XML)
    status_url: str = ""  # warm: the person's leg's status callback / hangup URL
    destination: str = ""
    action_url: str = ""  # Twilio/Plivo Dial action; Telnyx webhook_url
    aleg_url: str = ""  # Plivo only
    account: str = ""
    token: str = field(default="", repr=False)  # the auth token the request used: signs callbacks
    leg_id: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    settled: bool = False
    outcome: str | None = None
    replies: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {"carrier": self.carrier, "call_id": self.call_id, "received": self.received, "kind": self.kind,
                "destination": self.destination, "action_url": self.action_url, "aleg_url": self.aleg_url,
                "leg_id": self.leg_id, "settled": self.settled, "outcome": self.outcome,
                "replies": copy.deepcopy(self.replies)}


class TransferState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.legs: list[TransferLeg] = []
        self.outcomes: dict[str, str] = {}
        self.telnyx_key: Ed25519PrivateKey | None = None

    def reset(self) -> None:
        with self.lock:
            self.legs.clear()
            self.outcomes.clear()
            self.telnyx_key = None


def _dial_of(xml_text: str) -> tuple[str, str]:
    """(destination, action URL) of the first <Dial> in TwiML / Plivo XML; ("", "") if none."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return "", ""
    dial = root.find(".//Dial")
    if dial is None:
        return "", ""
    target = next((child for child in dial if child.tag in ("Number", "Sip", "User")), None)
    destination = (target.text or "").strip() if target is not None else (dial.text or "").strip()
    if destination.isdigit():  # Plivo numbers have no "+"
        destination = "+" + destination
    return destination, dial.get("action", "")


def _twilio_signature(token: str, url: str, form: dict[str, str]) -> str:
    return RequestValidator(token).compute_signature(url, form)


def _plivo_headers(token: str, url: str, form: dict[str, str]) -> dict[str, str]:
    nonce = secrets.token_hex(10)
    payload = url + "?" + "".join(name + form[name] for name in sorted(form)) + "." + nonce
    signature = base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha256).digest()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


def install_carrier_transfers(app: Flask, carrier_state: Any) -> TransferState:
    """Add the transfer legs to the carriers simulator (``carrier_state`` is its state)."""
    state = TransferState()
    app.extensions["carriers_sim_transfers"] = state
    also_on_reset(app, state.reset)

    @app.after_request
    def _record_redirects(response: Response) -> Response:
        if request.method != "POST" or response.status_code >= 400:
            return response
        path = request.path
        if path.startswith("/2010-04-01/Accounts/") and "/Calls/" in path:
            twiml = request.form.get("Twiml", "")
            destination, action = _dial_of(twiml)
            credentials = basic_auth()
            if destination and credentials:
                call_id = path.rsplit("/", 1)[-1].removesuffix(".json")
                with state.lock:
                    state.legs.append(TransferLeg("twilio", call_id, time.time(), destination=destination,
                                                  action_url=action, account=credentials[0], token=credentials[1]))
        elif path.startswith("/2010-04-01/Accounts/") and path.endswith("/Calls.json") \
                and WHISPER_PATH in request.form.get("Url", ""):
            credentials = basic_auth()
            created = response.get_json(silent=True) or {}
            if credentials:
                with state.lock:
                    state.legs.append(TransferLeg(
                        "twilio", str(created.get("sid", "")), time.time(), kind="warm",
                        destination=request.form.get("To", ""), action_url=request.form.get("Url", ""),
                        status_url=request.form.get("StatusCallback", ""), account=credentials[0],
                        token=credentials[1], leg_id=str(created.get("sid", ""))))
        elif path.startswith("/v1/Account/") and path.endswith("/Call/"):
            body = request.get_json(silent=True) or {}
            credentials = basic_auth()
            created = response.get_json(silent=True) or {}
            if WHISPER_PATH in str(body.get("answer_url", "")) and credentials:
                leg_id = str(created.get("request_uuid", ""))
                with state.lock:
                    state.legs.append(TransferLeg(
                        "plivo", leg_id, time.time(), kind="warm", destination="+" + str(body.get("to", "")),
                        action_url=str(body["answer_url"]), status_url=str(body.get("hangup_url", "")),
                        account=credentials[0], token=credentials[1], leg_id=leg_id))
        elif path == "/v2/calls" and "/webhooks/transfers/" in str((request.get_json(silent=True) or {})
                                                                  .get("webhook_url", "")):
            body = request.get_json(silent=True) or {}
            leg_id = str(((response.get_json(silent=True) or {}).get("data") or {}).get("call_control_id", ""))
            with state.lock:
                state.legs.append(TransferLeg("telnyx", leg_id, time.time(), kind="warm",
                                              destination=str(body.get("to", "")),
                                              action_url=str(body["webhook_url"]), leg_id=leg_id))
        elif path.startswith("/v2/calls/") and path.endswith("/actions/transfer"):
            body = request.get_json(silent=True) or {}
            call_id = path.split("/")[3]
            with state.lock:
                state.legs.append(TransferLeg("telnyx", call_id, time.time(), destination=str(body.get("to", "")),
                                              action_url=str(body.get("webhook_url", "")),
                                              leg_id="v3:" + secrets.token_urlsafe(16)))
        return response

    @app.post("/v1/Account/<auth_id>/Call/<call_uuid>/")
    def plivo_transfer(auth_id: str, call_uuid: str) -> Response:
        credentials = basic_auth()
        if credentials is None or credentials[0] != auth_id or not credentials[1]:
            raise SimError(401, {"api_id": str(uuid.uuid4()), "error": "Authentication failed"})
        try:
            body = json_object_body()
        except ValueError as exc:
            raise SimError(400, {"api_id": str(uuid.uuid4()), "error": str(exc)}) from exc
        amd = app.extensions.get("carriers_sim_amd")
        if "/webhooks/transfers/" not in str(body.get("aleg_url", "")) and amd is not None and amd.plivo_transfer:
            return amd.plivo_transfer(auth_id, call_uuid)  # not a live transfer: a voicemail (sim/amd.py)
        if body.get("legs") not in ("aleg", "bleg", "both") or not body.get("aleg_url"):
            raise SimError(400, {"api_id": str(uuid.uuid4()), "error": "legs and aleg_url are required"})
        with carrier_state.lock:
            call = carrier_state.touch("plivo", call_uuid)
            call.updates.append({"time": utc_now_iso(), "action": "transfer", "params": copy.deepcopy(body)})
        with state.lock:
            state.legs.append(TransferLeg("plivo", call_uuid, time.time(), aleg_url=str(body["aleg_url"]),
                                          account=auth_id, token=credentials[1], leg_id=str(uuid.uuid4()),
                                          kind="dial" if str(body["aleg_url"]).endswith("/dial") else "fetch"))
        response = jsonify({"api_id": str(uuid.uuid4()), "message": "call transferred"})
        response.status_code = 202
        return response

    @app.post("/_sim/transfers/config")
    def transfers_config() -> Response:
        body = request.get_json(silent=True) or {}
        outcomes = body.get("outcomes", {})
        if not isinstance(outcomes, dict) or any(value not in OUTCOMES for value in outcomes.values()):
            raise SimError(400, {"error": f"outcomes: destination -> one of {', '.join(OUTCOMES)}"})
        with state.lock:
            state.outcomes.update(outcomes)
            if body.get("telnyx_signing_key"):
                state.telnyx_key = Ed25519PrivateKey.from_private_bytes(
                    base64.b64decode(body["telnyx_signing_key"]))
        return jsonify({"outcomes": state.outcomes})

    @app.get("/_sim/transfers")
    def transfers_list() -> Response:
        with state.lock:
            return jsonify({"legs": [leg.view() for leg in state.legs]})

    @app.post("/_sim/transfers/settle")
    def transfers_settle() -> Response:
        body = request.get_json(silent=True) or {}
        deliver_to = body.get("deliver_to")
        with state.lock:
            pending = [leg for leg in state.legs if not leg.settled]
            for leg in pending:
                leg.settled = True
                leg.outcome = state.outcomes.get(leg.destination, "answer")
            key, outcomes = state.telnyx_key, dict(state.outcomes)
        with requests.Session() as http:
            http.trust_env = False
            for leg in pending:
                if leg.kind == "warm":
                    _play_warm(http, leg, deliver_to, key, outcomes, carrier_state)
                else:
                    _play(http, leg, deliver_to, key, outcomes)
        with state.lock:
            return jsonify({"legs": [leg.view() for leg in pending]})

    return state


def _play(http: requests.Session, leg: TransferLeg, deliver_to: str | None, key: Ed25519PrivateKey | None,
          outcomes: dict[str, str]) -> None:
    outcome = leg.outcome or "answer"
    if leg.carrier == "twilio":
        form = {"AccountSid": leg.account, "CallSid": leg.call_id, "CallStatus": "in-progress",
                "DialCallSid": leg.leg_id, "DialCallStatus": _TWILIO_STATUS[outcome], "Direction": "inbound"}
        if outcome == "answer":
            form["DialCallDuration"] = "42"
        _post_form(http, leg, leg.action_url, form, deliver_to,
                   {"X-Twilio-Signature": _twilio_signature(leg.token, leg.action_url, form)})
    elif leg.carrier == "plivo":
        fetch = {"CallUUID": leg.call_id, "Event": "Transfer", "CallStatus": "in-progress", "Direction": "inbound"}
        reply = _post_form(http, leg, leg.aleg_url, fetch, deliver_to, _plivo_headers(leg.token, leg.aleg_url, fetch))
        if leg.kind == "fetch":  # the caller's call was moved to a URL (hold, back to the agent): done
            return
        # Plivo learns what to dial from the XML it fetches: the outcome follows that.
        leg.destination, leg.action_url = _dial_of(reply)
        outcome = leg.outcome = outcomes.get(leg.destination, "answer")
        if not leg.action_url:
            return
        form = {"CallUUID": leg.call_id, "DialALegUUID": leg.call_id, "DialBLegUUID": leg.leg_id,
                "DialStatus": _PLIVO_STATUS[outcome], "DialAction": "hangup"}
        if outcome == "answer":
            form["DialBLegDuration"] = "42"
        _post_form(http, leg, leg.action_url, form, deliver_to, _plivo_headers(leg.token, leg.action_url, form))
    elif leg.carrier == "telnyx":
        if outcome == "answer":
            _post_event(http, leg, "call.answered", {}, deliver_to, key)
        _post_event(http, leg, "call.hangup", {"hangup_cause": _TELNYX_CAUSE[outcome]}, deliver_to, key)


def _play_warm(http: requests.Session, leg: TransferLeg, deliver_to: str | None, key: Ed25519PrivateKey | None,
               outcomes: dict[str, str], carrier_state: Any) -> None:
    """The person's own leg of a warm transfer: ring, answer, hear the whisper, press the
    key it names (answer) or not (decline), hang up; or busy / no answer / failure."""
    outcome = leg.outcome = outcomes.get(leg.destination, "answer")
    answered = outcome in ("answer", "decline")
    if leg.carrier == "telnyx":
        if answered:
            _post_event(http, leg, "call.answered", {}, deliver_to, key)
            with carrier_state.lock:
                call = carrier_state.calls.get(("telnyx", leg.leg_id))
                gathers = [u for u in (call.updates if call else []) if u.get("action") == "gather_using_speak"]
            spoken = str(gathers[-1]["params"].get("payload", "")) if gathers else ""
            pressed = PRESS_RE.search(spoken)
            digits = pressed.group(1) if pressed and outcome == "answer" else ""
            if gathers:
                _post_event(http, leg, "call.gather.ended", {"digits": digits, "status": "valid" if digits
                                                             else "timeout"}, deliver_to, key)
        _post_event(http, leg, "call.hangup", {"hangup_cause": _TELNYX_CAUSE[outcome]}, deliver_to, key)
        return
    sign = (lambda url, form: {"X-Twilio-Signature": _twilio_signature(leg.token, url, form)}) \
        if leg.carrier == "twilio" else (lambda url, form: _plivo_headers(leg.token, url, form))
    id_field = "CallSid" if leg.carrier == "twilio" else "CallUUID"
    if answered:
        form = {id_field: leg.leg_id, "CallStatus": "in-progress", "Direction": "outbound-api", "To": leg.destination}
        whisper = _post_form(http, leg, leg.action_url, form, deliver_to, sign(leg.action_url, form))
        gather = _gather_of(whisper)
        pressed = PRESS_RE.search(whisper)
        if gather and pressed and outcome == "answer":
            digits = {**form, "Digits": pressed.group(1)}
            _post_form(http, leg, gather, digits, deliver_to, sign(gather, digits))
    status = {id_field: leg.leg_id, "CallStatus": _TWILIO_STATUS[outcome], "Direction": "outbound-api"}
    if answered:
        status["CallDuration" if leg.carrier == "twilio" else "Duration"] = "42"
    _post_form(http, leg, leg.status_url, status, deliver_to, sign(leg.status_url, status))


def _gather_of(xml_text: str) -> str:
    """The action URL of a <Gather> (TwiML) or <GetDigits> (Plivo XML); "" if none."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return ""
    found = root.find(".//Gather")
    found = found if found is not None else root.find(".//GetDigits")
    return found.get("action", "") if found is not None else ""


def _post_form(http: requests.Session, leg: TransferLeg, url: str, form: dict[str, str], deliver_to: str | None,
               headers: dict[str, str]) -> str:
    try:
        response = http.post(delivered_to(url, deliver_to), data=form, headers=headers, timeout=CALLBACK_TIMEOUT_S)
        leg.replies.append({"url": url, "status": response.status_code, "body": response.text})
        return response.text
    except requests.RequestException as exc:
        leg.replies.append({"url": url, "status": None, "error": type(exc).__name__})
        return ""


def _post_event(http: requests.Session, leg: TransferLeg, event_type: str, extra: dict[str, Any],
                deliver_to: str | None, key: Ed25519PrivateKey | None) -> None:
    body = json.dumps({"data": {"id": str(uuid.uuid4()), "event_type": event_type, "occurred_at": utc_now_iso(),
                                "record_type": "event",
                                "payload": {"call_control_id": leg.leg_id, "to": leg.destination, **extra}}},
                      separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        stamp = str(int(time.time()))
        headers.update({"telnyx-timestamp": stamp,
                        "telnyx-signature-ed25519": base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode()})
    try:
        response = http.post(delivered_to(leg.action_url, deliver_to), data=body, headers=headers,
                             timeout=CALLBACK_TIMEOUT_S)
        leg.replies.append({"url": leg.action_url, "event": event_type, "status": response.status_code,
                            "body": response.text})
    except requests.RequestException as exc:
        leg.replies.append({"url": leg.action_url, "event": event_type, "status": None, "error": type(exc).__name__})


__all__ = ["install_carrier_transfers", "TransferState"]
