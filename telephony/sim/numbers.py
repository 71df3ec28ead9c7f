"""Phone-number inventories of the carrier simulator: which account holds which number,
and where the carrier sends its webhooks. Hooked into ``carriers.create_app`` by
``install``; the endpoints are the real ones the official SDKs call:

- Twilio  ``GET  /2010-04-01/Accounts/<sid>/IncomingPhoneNumbers.json?PhoneNumber=``
          ``POST /2010-04-01/Accounts/<sid>/IncomingPhoneNumbers/<PN sid>.json``
- Telnyx  ``GET /v2/phone_numbers?filter[phone_number]=``, ``PATCH /v2/phone_numbers/<id>``,
          ``GET|PATCH /v2/texml_applications/<id>``, ``GET|POST /v2/texml_applications``,
          ``GET|PATCH /v2/call_control_applications/<id>``
- Plivo   ``GET|POST /v1/Account/<auth id>/Number/<number>/``,
          ``GET|POST /v1/Account/<auth id>/Application/[<app id>/]``

Every account starts empty (it holds no number). The control API fills it:

``POST /_sim/numbers`` ``{"carrier": "twilio", "account": "AC...", "numbers": [{"phone_number":
"+14155550100", "voice_url": "...", "voice_application_sid": "AP..."}]}``; Telnyx names the
account by its ``"api_key"`` (kept as a digest only) and takes ``"applications": [{"id", "kind":
"texml"|"call_control", "voice_url", "status_callback", "webhook_event_url", "name"}]`` and numbers
with ``"connection_id"``; Plivo takes ``"applications": [{"app_id", "answer_url", "hangup_url",
"app_name"}]`` and numbers with ``"app_id"``. ``GET /_sim/numbers`` shows every inventory
(Telnyx accounts by a digest prefix). ``POST /_sim/reset`` empties them.
"""
from __future__ import annotations

import copy
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Flask, Response, jsonify, request

from telephony.sim.common import SimError, form_to_dict, json_object_body

CARRIERS = ("twilio", "telnyx", "plivo")


def account_digest(api_key: str) -> str:
    """How a Telnyx account is named here: the API key is its only identity, and a secret."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass
class Inventory:
    """One account: numbers by E.164 and applications by id, as plain JSON objects."""

    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)


class NumbersState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accounts: dict[tuple[str, str], Inventory] = {}

    def reset(self) -> None:
        with self.lock:
            self.accounts.clear()

    def inventory(self, carrier: str, account: str) -> Inventory:
        """The account's inventory (caller holds the lock); empty for an unknown account."""
        return self.accounts.setdefault((carrier, account), Inventory())


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _seed(state: NumbersState, body: dict[str, Any]) -> None:
    carrier = body.get("carrier")
    if carrier not in CARRIERS:
        raise ValueError(f"carrier must be one of {', '.join(CARRIERS)}")
    account = account_digest(_text(body.get("api_key"), "api_key")) if carrier == "telnyx" \
        else _text(body.get("account"), "account")
    numbers, applications = body.get("numbers", []), body.get("applications", [])
    if not isinstance(numbers, list) or not isinstance(applications, list):
        raise ValueError("numbers and applications must be lists")
    with state.lock:
        inventory = state.inventory(carrier, account)
        for raw in applications:
            application = _application(carrier, raw)
            inventory.applications[application["id"]] = application
        for raw in numbers:
            number = _number(carrier, account, raw)
            inventory.numbers[number["phone_number"]] = number


def _application(carrier: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("each application must be an object")
    if carrier == "telnyx":
        kind = raw.get("kind", "texml")
        if kind not in ("texml", "call_control"):
            raise ValueError("kind must be texml or call_control")
        return {"id": str(raw.get("id") or secrets.randbelow(10**18)), "kind": kind,
                "name": raw.get("name", f"{kind} application"), "voice_url": raw.get("voice_url"),
                "status_callback": raw.get("status_callback"), "webhook_event_url": raw.get("webhook_event_url")}
    if carrier == "plivo":
        return {"id": str(raw.get("app_id") or secrets.randbelow(10**17)), "app_name": raw.get("app_name", "app"),
                "answer_url": raw.get("answer_url"), "hangup_url": raw.get("hangup_url")}
    raise ValueError("twilio numbers hold their own URLs: seed voice_url / status_callback on the number")


def _number(carrier: str, account: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("each number must be an object")
    e164 = _text(raw.get("phone_number"), "phone_number")
    if not e164.startswith("+"):
        raise ValueError("phone_number must be E.164 (+ and digits)")
    if carrier == "twilio":
        return {"sid": "PN" + secrets.token_hex(16), "account_sid": account, "phone_number": e164,
                "voice_url": raw.get("voice_url"), "voice_method": "POST",
                "status_callback": raw.get("status_callback"), "status_callback_method": "POST",
                "voice_application_sid": raw.get("voice_application_sid"), "trunk_sid": raw.get("trunk_sid")}
    if carrier == "telnyx":
        return {"id": str(secrets.randbelow(10**18)), "phone_number": e164,
                "connection_id": raw.get("connection_id"), "status": "active", "record_type": "phone_number"}
    return {"phone_number": e164, "app_id": raw.get("app_id")}


def install(app: Flask, state: NumbersState, *, twilio_auth: Callable[[str], None], telnyx_auth: Callable[[], str],
            plivo_auth: Callable[[str], None], error_for: Callable[[str, int, str], SimError]) -> None:
    """Add the number endpoints, serving ``state``, to the carrier simulator ``app``. The
    callables are the simulator's own authentication (raising its carrier-shaped 401) and
    error builder."""
    app.extensions["carriers_sim_numbers"] = state

    def not_found() -> SimError:
        return error_for(request.path, 404, "The requested resource was not found")

    def bad_request(message: str) -> SimError:
        return error_for(request.path, 400, message)

    # -- Twilio ---------------------------------------------------------------------------

    def twilio_resource(number: dict[str, Any]) -> dict[str, Any]:
        uri = f"/2010-04-01/Accounts/{number['account_sid']}/IncomingPhoneNumbers/{number['sid']}.json"
        return {**copy.deepcopy(number), "friendly_name": number["phone_number"], "uri": uri,
                "api_version": "2010-04-01", "capabilities": {"voice": True, "sms": True, "mms": False}}

    @app.get("/2010-04-01/Accounts/<account_sid>/IncomingPhoneNumbers.json")
    def twilio_list_numbers(account_sid: str) -> Response:
        twilio_auth(account_sid)
        pattern = request.args.get("PhoneNumber", "")
        page_size = min(int(request.args.get("PageSize", "50") or 50), 1000)
        with state.lock:
            numbers = [twilio_resource(number) for number in state.inventory("twilio", account_sid).numbers.values()
                       if pattern in number["phone_number"]]
        uri = f"/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers.json"
        return jsonify({"incoming_phone_numbers": numbers[:page_size], "start": 0, "end": max(len(numbers) - 1, 0),
                        "page": 0, "page_size": page_size, "uri": uri, "first_page_uri": uri,
                        "next_page_uri": None, "previous_page_uri": None})

    @app.post("/2010-04-01/Accounts/<account_sid>/IncomingPhoneNumbers/<sid>.json")
    def twilio_update_number(account_sid: str, sid: str) -> Response:
        twilio_auth(account_sid)
        params = form_to_dict(request.form)
        with state.lock:
            found = [n for n in state.inventory("twilio", account_sid).numbers.values() if n["sid"] == sid]
            if not found:
                raise not_found()
            number = found[0]
            for form_name, name in (("VoiceUrl", "voice_url"), ("VoiceMethod", "voice_method"),
                                    ("StatusCallback", "status_callback"),
                                    ("StatusCallbackMethod", "status_callback_method"),
                                    ("VoiceApplicationSid", "voice_application_sid"), ("TrunkSid", "trunk_sid")):
                if form_name in params:
                    number[name] = params[form_name] or None
            return jsonify(twilio_resource(number))

    # -- Telnyx ---------------------------------------------------------------------------

    def telnyx_body() -> dict[str, Any]:
        try:
            return json_object_body()
        except ValueError as exc:
            raise bad_request(str(exc)) from exc

    def telnyx_application(kind: str, application: dict[str, Any]) -> dict[str, Any]:
        if kind == "texml":
            return {"id": application["id"], "record_type": "texml_application",
                    "friendly_name": application["name"], "voice_url": application["voice_url"],
                    "voice_method": "post", "status_callback": application["status_callback"],
                    "status_callback_method": "post", "active": True}
        return {"id": application["id"], "record_type": "call_control_application",
                "application_name": application["name"], "webhook_event_url": application["webhook_event_url"],
                "webhook_api_version": "2", "active": True}

    def telnyx_page(data: list[dict[str, Any]]) -> Response:
        return jsonify({"data": data, "meta": {"page_number": 1, "page_size": 250, "total_pages": 1,
                                               "total_results": len(data)}})

    @app.get("/v2/phone_numbers")
    def telnyx_list_numbers() -> Response:
        account = telnyx_auth()
        wanted = request.args.get("filter[phone_number]")
        with state.lock:
            data = [copy.deepcopy(n) for n in state.inventory("telnyx", account).numbers.values()
                    if wanted in (None, n["phone_number"])]
        return telnyx_page(data)

    @app.patch("/v2/phone_numbers/<number_id>")
    def telnyx_update_number(number_id: str) -> Response:
        account = telnyx_auth()
        body = telnyx_body()
        with state.lock:
            inventory = state.inventory("telnyx", account)
            found = [n for n in inventory.numbers.values() if n["id"] == number_id]
            if not found:
                raise not_found()
            if "connection_id" in body:
                if body["connection_id"] and body["connection_id"] not in inventory.applications:
                    raise error_for(request.path, 422, "connection_id does not name a connection of this account")
                found[0]["connection_id"] = body["connection_id"] or None
            return jsonify({"data": copy.deepcopy(found[0])})

    def telnyx_application_routes(kind: str, path: str) -> None:
        def find(account: str, application_id: str) -> dict[str, Any]:
            application = state.inventory("telnyx", account).applications.get(application_id)
            if application is None or application["kind"] != kind:
                raise not_found()
            return application

        def get_one(application_id: str) -> Response:
            account = telnyx_auth()
            with state.lock:
                return jsonify({"data": telnyx_application(kind, find(account, application_id))})

        def update_one(application_id: str) -> Response:
            account = telnyx_auth()
            body = telnyx_body()
            with state.lock:
                application = find(account, application_id)
                _apply_telnyx(kind, application, body)
                return jsonify({"data": telnyx_application(kind, application)})

        app.add_url_rule(f"/v2/{path}/<application_id>", f"telnyx_get_{kind}", get_one, methods=["GET"])
        app.add_url_rule(f"/v2/{path}/<application_id>", f"telnyx_update_{kind}", update_one, methods=["PATCH"])

    telnyx_application_routes("texml", "texml_applications")
    telnyx_application_routes("call_control", "call_control_applications")

    @app.get("/v2/texml_applications")
    def telnyx_list_texml() -> Response:
        account = telnyx_auth()
        wanted = (request.args.get("filter[friendly_name]") or "").lower()
        with state.lock:
            data = [telnyx_application("texml", a) for a in state.inventory("telnyx", account).applications.values()
                    if a["kind"] == "texml" and wanted in a["name"].lower()]
        return telnyx_page(data)

    @app.post("/v2/texml_applications")
    def telnyx_create_texml() -> Response:
        account = telnyx_auth()
        body = telnyx_body()
        for name in ("friendly_name", "voice_url"):
            if not body.get(name):
                raise error_for(request.path, 422, f"The '{name}' parameter is required.")
        application: dict[str, Any] = {"id": str(secrets.randbelow(10**18)), "kind": "texml", "name": "",
                                       "voice_url": None, "status_callback": None, "webhook_event_url": None}
        _apply_telnyx("texml", application, body)
        with state.lock:
            state.inventory("telnyx", account).applications[application["id"]] = application
        response = jsonify({"data": telnyx_application("texml", application)})
        response.status_code = 201
        return response

    # -- Plivo ----------------------------------------------------------------------------

    def plivo_body() -> dict[str, Any]:
        try:
            return json_object_body()
        except ValueError as exc:
            raise bad_request(str(exc)) from exc

    def plivo_application(auth_id: str, application: dict[str, Any]) -> dict[str, Any]:
        return {"app_id": application["id"], "app_name": application["app_name"],
                "answer_url": application["answer_url"], "answer_method": "POST",
                "hangup_url": application["hangup_url"], "hangup_method": "POST",
                "resource_uri": f"/v1/Account/{auth_id}/Application/{application['id']}/"}

    def plivo_number(auth_id: str, digits: str) -> dict[str, Any]:
        number = state.inventory("plivo", auth_id).numbers.get(f"+{digits}")
        if number is None:
            raise not_found()
        return number

    @app.route("/v1/Account/<auth_id>/Number/<digits>/", methods=["GET", "POST"])
    def plivo_number_resource(auth_id: str, digits: str) -> Response:
        plivo_auth(auth_id)
        body = plivo_body() if request.method == "POST" else {}
        with state.lock:
            number = plivo_number(auth_id, digits)
            if request.method == "POST":
                if "app_id" in body:
                    if body["app_id"] and body["app_id"] not in state.inventory("plivo", auth_id).applications:
                        raise bad_request("invalid app_id")
                    number["app_id"] = body["app_id"] or None
                return jsonify({"api_id": secrets.token_hex(8), "message": "changed"})
            application = f"/v1/Account/{auth_id}/Application/{number['app_id']}/" if number["app_id"] else None
            return jsonify({"api_id": secrets.token_hex(8), "number": digits, "alias": None,
                            "application": application, "number_type": "local", "voice_enabled": True,
                            "resource_uri": f"/v1/Account/{auth_id}/Number/{digits}/"})

    @app.route("/v1/Account/<auth_id>/Application/<app_id>/", methods=["GET", "POST"])
    def plivo_application_resource(auth_id: str, app_id: str) -> Response:
        plivo_auth(auth_id)
        body = plivo_body() if request.method == "POST" else {}
        with state.lock:
            application = state.inventory("plivo", auth_id).applications.get(app_id)
            if application is None:
                raise not_found()
            if request.method == "POST":
                for name in ("answer_url", "hangup_url", "app_name"):
                    if body.get(name):
                        application[name] = body[name]
                return jsonify({"api_id": secrets.token_hex(8), "message": "changed"})
            return jsonify({"api_id": secrets.token_hex(8), **plivo_application(auth_id, application)})

    @app.route("/v1/Account/<auth_id>/Application/", methods=["GET", "POST"])
    def plivo_applications(auth_id: str) -> Response:
        plivo_auth(auth_id)
        if request.method == "POST":
            body = plivo_body()
            if not body.get("app_name"):
                raise bad_request("app_name is required")
            application = {"id": str(secrets.randbelow(10**17)), "app_name": body["app_name"],
                           "answer_url": body.get("answer_url"), "hangup_url": body.get("hangup_url")}
            with state.lock:
                state.inventory("plivo", auth_id).applications[application["id"]] = application
            response = jsonify({"api_id": secrets.token_hex(8), "app_id": application["id"],
                                "message": "created"})
            response.status_code = 201
            return response
        wanted = request.args.get("app_name")
        with state.lock:
            objects = [plivo_application(auth_id, a) for a in state.inventory("plivo", auth_id).applications.values()
                       if wanted in (None, a["app_name"])]
        return jsonify({"api_id": secrets.token_hex(8), "objects": objects,
                        "meta": {"limit": 20, "offset": 0, "total_count": len(objects), "next": None,
                                 "previous": None}})

    # -- control --------------------------------------------------------------------------

    @app.post("/_sim/numbers")
    def sim_seed_numbers() -> Response:
        try:
            _seed(state, json_object_body())
        except ValueError as exc:
            raise SimError(400, {"detail": str(exc)}) from exc
        return sim_numbers()

    @app.get("/_sim/numbers")
    def sim_numbers() -> Response:
        with state.lock:
            accounts = [{"carrier": carrier, "account": account[:12] if carrier == "telnyx" else account,
                         "numbers": list(copy.deepcopy(inventory.numbers).values()),
                         "applications": list(copy.deepcopy(inventory.applications).values())}
                        for (carrier, account), inventory in state.accounts.items()]
        return jsonify({"accounts": accounts})


def _apply_telnyx(kind: str, application: dict[str, Any], body: dict[str, Any]) -> None:
    """A TeXML / Call Control application create or PATCH: only the fields sent change."""
    names = {"friendly_name": "name", "voice_url": "voice_url", "status_callback": "status_callback"} \
        if kind == "texml" else {"application_name": "name", "webhook_event_url": "webhook_event_url"}
    for given, stored in names.items():
        if given in body:
            application[stored] = body[given]
