"""Carrier webhooks (/webhooks/...): the URLs agencies configure at their carrier.

The routes are those of the app's carriers, each from its description
(``CarrierSpec.webhook_paths``: ``/webhooks/<carrier>/<path>``). Today:

Inbound calls (answered with XML, always 200 unless the signature is bad):
  POST /webhooks/twilio/voice     Twilio number "A call comes in"
  POST /webhooks/telnyx/texml     Telnyx TeXML application voice URL
  POST /webhooks/plivo/answer     Plivo application answer_url
Status callbacks (204; 403 for a bad signature):
  POST /webhooks/twilio/status, /webhooks/telnyx/status (TeXML), /webhooks/plivo/hangup
Telnyx Call Control (JSON events; answered through the REST API):
  POST /webhooks/telnyx/call-control

HTTP in, HTTP out: the use cases live in services/inbound.py and services/call_status.py
(signatures: services/carrier_webhooks.py).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from flask import Blueprint, Response, g, jsonify, request
from flask.blueprints import BlueprintSetupState

from ..carriers.base import Answer, WebhookRequest
from ..carriers.registry import get_carriers
from ..config import get_config
from ..db import get_db, get_session
from ..services import call_control, call_status, inbound
from ..services.carrier_webhooks import SignatureRejected
from . import carrier_webhook_docs
from .schema import document

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def webhook_request() -> WebhookRequest:
    # The URL the carrier signed is the public one (PUBLIC_BASE_URL), not the one this
    # process sees behind a TLS-terminating proxy or load balancer.
    query = request.query_string.decode("latin-1")
    public_url = f"{get_config().public_base_url}{request.script_root}{request.path}" + (f"?{query}" if query else "")
    body = request.get_data(cache=True)  # cached, so request.form still parses it
    return WebhookRequest(method=request.method, public_url=public_url, headers=request.headers,
                          form=request.form, body=body)


def _inbound(carrier: str) -> Response:
    adapter = get_carriers().xml_adapter(carrier)
    outcome = None
    try:
        outcome = inbound.answer_inbound(get_session(), adapter, webhook_request())
        answer, ultravox_seconds = outcome.answer, outcome.ultravox_seconds
    except SignatureRejected:
        raise  # 403 through the app's error handler
    except Exception:  # the service has its own catch-all; this one guards the plumbing around it
        log.exception("%s inbound webhook failed outside the service; apologising", carrier)
        answer, ultravox_seconds = Answer.say(inbound.APOLOGY), None
    response = Response(adapter.render(answer), status=200, mimetype="text/xml")
    if outcome is not None and outcome.pending_write is not None:
        # The WSGI server closes the response once the answer is sent: the carrier (and
        # the caller) do not wait for this write.
        response.call_on_close(_store_after_answer(outcome))
    # Server-Timing: our own time vs the wait on Ultravox, so the benchmark (or anyone
    # looking at a slow answer) can tell them apart.
    timing = f"app;dur={(time.perf_counter() - g.get('started', time.perf_counter())) * 1000:.2f}"
    if ultravox_seconds is not None:
        timing += f", ultravox;dur={ultravox_seconds * 1000:.2f}"
    response.headers["Server-Timing"] = timing
    return response


def _store_after_answer(outcome: inbound.InboundOutcome) -> Callable[[], None]:
    # Runs after the request context is gone: it takes the database, nothing else.
    database = get_db()

    def store() -> None:
        try:
            inbound.store_pending_write(database, outcome)
        except Exception:  # after the answer there is nobody to report to but the log
            log.exception("inbound call: storing the answer after sending it failed")
    return store


def _status(carrier: str) -> tuple[str, int]:
    call_status.apply_status(get_session(), get_carriers().xml_adapter(carrier), webhook_request())
    return "", 204


def _call_control(carrier: str):
    call_control.handle_call_control_event(get_session(), webhook_request(), carrier)
    return jsonify({}), 200


_HANDLERS: dict[str, Callable[[str], Any]] = {"inbound": _inbound, "status": _status, "call-control": _call_control}


def _view(handler: Callable[[str], Any], carrier: str) -> Callable[[], Any]:
    def view() -> Any:
        return handler(carrier)
    return view


_SUMMARIES = {"inbound": "{title}: a call comes in (answered with XML that streams it to the number's agent)",
              "status": "{title}: status callback of an inbound call",
              "call-control": "{title}: Call Control event (answered through the REST API)"}
_RESPONSES: dict[str, dict[int, tuple[Any, str]]] = {
    "inbound": {200: (carrier_webhook_docs.XML_ANSWER, "Always, whatever fails behind it: the stream, or an "
                                                       "apology and hang-up (or the number's fallback)"),
                403: (None, carrier_webhook_docs.BAD_SIGNATURE)},
    "status": {204: (None, "Applied, duplicate or ignored (statuses only move forward)"),
               403: (None, carrier_webhook_docs.BAD_SIGNATURE), 503: (None, carrier_webhook_docs.DATABASE_UNAVAILABLE)},
    "call-control": {200: (carrier_webhook_docs.EMPTY_JSON, "Handled"),
                     403: (None, carrier_webhook_docs.BAD_SIGNATURE),
                     503: (None, carrier_webhook_docs.DATABASE_UNAVAILABLE)},
}


def _documented(view: Callable[[], Any], kind: str, carrier: Any) -> Callable[[], Any]:
    return document(summary=_SUMMARIES[kind].format(title=carrier.title), tags=["carrier webhooks"], security=[],
                    parameters=carrier_webhook_docs.signature_headers(carrier.name),
                    bodies=carrier_webhook_docs.request_bodies(carrier.name, kind),
                    responses=_RESPONSES[kind])(view)


@bp.record
def _carrier_routes(state: BlueprintSetupState) -> None:
    """POST /webhooks/<carrier>/<path> for each webhook of each carrier of the app's
    registry (create_app builds it before registering this blueprint). The endpoint is
    named after the path: webhooks.twilio_voice, webhooks.telnyx_call_control..."""
    for carrier in get_carriers(state.app):
        for kind, path in carrier.webhook_paths().items():
            state.add_url_rule(path, path.strip("/").replace("/", "_").replace("-", "_"),
                               _documented(_view(_HANDLERS[kind], carrier.name), kind, carrier), methods=["POST"])
