"""/openapi.json describes every route of the app, and /docs shows it.

The URL map is the truth: a route without `document(...)` metadata fails here with the
rule and method to describe. The document is valid OpenAPI 3.1, carries the answers
every kind of route gives (401/403/404/429/503 with the Error schema), the query
parameters of list routes, the CSV and form bodies, and the agency events as
`webhooks` that match what the service really sends.
"""
from __future__ import annotations

import json
import re
import uuid

import pytest
from cryptography.fernet import Fernet
from openapi_spec_validator import validate as validate_openapi
from sqlalchemy import select

from telephony import create_app
from telephony.api.agency_events import EVENT_MODELS, CampaignCompletedEvent
from telephony.config import Config
from telephony.models import EventDelivery
from telephony.services.campaigns.attempts import CONTACT_STATES
from telephony.services.events import EVENT_TYPES, emit_call_event

from .lifecycle_support import add_call, get_call

_CONVERTER = re.compile(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")


@pytest.fixture(scope="module")
def described():
    """An app that never touches its database, and the document it serves."""
    app = create_app(Config(database_url="sqlite://", credentials_keys=(Fernet.generate_key().decode(),)))
    document = app.test_client().get("/openapi.json").json
    yield app, document
    app.extensions["telephony.db"].dispose()


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_route_of_the_app_is_in_the_document(described):
    app, document = described
    missing = []
    for rule in app.url_map.iter_rules():
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if method.lower() not in document["paths"].get(path, {}):
                missing.append(f"{method} {rule.rule} (endpoint {rule.endpoint!r})")
    assert not missing, ("routes missing from /openapi.json; give each view @document(...) "
                         "(telephony/api/schema.py):\n  " + "\n  ".join(sorted(missing)))


def test_the_document_is_valid_openapi_3_1(described):
    _, document = described
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


def test_the_routes_the_document_used_to_miss_are_described(described):
    _, document = described
    paths = document["paths"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/",
                 "/webhooks/twilio/voice", "/webhooks/twilio/status", "/webhooks/telnyx/texml",
                 "/webhooks/telnyx/status", "/webhooks/telnyx/call-control", "/webhooks/plivo/answer",
                 "/webhooks/plivo/hangup", "/webhooks/outbound/twilio/status/{call_id}",
                 "/webhooks/outbound/telnyx/call-control/{call_id}", "/webhooks/outbound/plivo/answer/{call_id}",
                 "/webhooks/outbound/plivo/hangup/{call_id}"):
        assert path in paths, path
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert paths["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Readiness")


def test_authenticated_operations_document_401_403_and_503_with_the_error_schema(described):
    _, document = described
    error = {"$ref": "#/components/schemas/Error"}
    checked = 0
    for path, method, operation in _operations(document):
        if not operation["security"]:
            continue
        checked += 1
        for status in ("401", "403", "503"):
            response = operation["responses"].get(status)
            assert response is not None, f"{method.upper()} {path} lacks {status}"
            assert response["content"]["application/json"]["schema"] == error, f"{method.upper()} {path} {status}"
        assert "Retry-After" in operation["responses"]["503"]["headers"]
        if "{" in path:
            assert "404" in operation["responses"], f"{method.upper()} {path} lacks 404"
    assert checked > 40


def test_rate_limited_operations_document_429_with_retry_after(described):
    _, document = described
    paths = document["paths"]
    for path, method in (("/calls/public/create-web-call", "post"), ("/api/v1/calls", "post"),
                         ("/functions/v1/calls-create", "post"), ("/api/v1/calls/websocket", "post")):
        response = paths[path][method]["responses"]["429"]
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert "Retry-After" in response["headers"]


def test_list_routes_document_their_query_parameters(described):
    _, document = described
    paths = document["paths"]

    def query(path: str) -> dict[str, dict]:
        return {p["name"]: p for p in paths[path]["get"]["parameters"] if p["in"] == "query"}

    assert {"cursor", "limit", "status", "agent_id"} <= set(query("/api/v1/calls"))
    assert set(query("/api/v1/do-not-call")) == {"limit", "after"}
    contacts = query("/api/v1/campaigns/{campaign_id}/contacts")
    assert set(contacts) == {"state", "limit", "offset"}
    assert "queued" in contacts["state"]["schema"]["enum"] and contacts["limit"]["schema"]["maximum"] == 1000
    assert {"status", "limit"} <= set(query("/api/v1/event-endpoints/{endpoint_id}/deliveries"))


def test_non_json_bodies_are_described(described):
    _, document = described
    paths = document["paths"]
    contacts = paths["/api/v1/campaigns/{campaign_id}/contacts"]["post"]["requestBody"]["content"]
    assert {"text/csv", "application/json"} <= set(contacts)
    voice = paths["/webhooks/twilio/voice"]["post"]
    form = voice["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert {"CallSid", "From", "To"} <= set(form["properties"])
    assert [p["name"] for p in voice["parameters"] if p["in"] == "header"] == ["X-Twilio-Signature"]
    assert "text/xml" in voice["responses"]["200"]["content"]
    telnyx = paths["/webhooks/telnyx/call-control"]["post"]
    assert "application/json" in telnyx["requestBody"]["content"]
    assert {"telnyx-signature-ed25519", "telnyx-timestamp"} <= {p["name"] for p in telnyx["parameters"]}
    plivo = paths["/webhooks/outbound/plivo/hangup/{call_id}"]["post"]
    assert "CallUUID" in plivo["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]["properties"]


def test_agency_events_are_the_documents_webhooks(described):
    _, document = described
    assert set(document["webhooks"]) == set(EVENT_TYPES)
    for event_type, item in document["webhooks"].items():
        operation = item["post"]
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} == {p["name"] for p in operation["parameters"]}
        schema_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert schema_ref.rsplit("/", 1)[1] in document["components"]["schemas"]
        assert "410" in operation["responses"]


@pytest.mark.private_event_endpoints
def test_the_call_events_really_sent_match_their_documented_schema(app, client, db, make_tenant):
    tenant = make_tenant()
    created = client.post("/api/v1/event-endpoints", json={"url": "http://127.0.0.1:9/hook", "events": EVENT_TYPES},
                          headers=tenant.admin())
    assert created.status_code == 201, created.json
    call_id = add_call(db, tenant.agency_id)
    with app.app_context(), db.session() as session:
        call = session.merge(get_call(db, call_id))
        for event_type in ("call.started", "call.answered", "call.ended"):
            assert emit_call_event(session, call, event_type)
    with db.session() as session:
        payloads = list(session.scalars(select(EventDelivery.payload)))
    assert len(payloads) == 3
    for payload in payloads:
        body = json.loads(payload)
        EVENT_MODELS[body["type"]].model_validate_json(payload)  # extra="forbid": no undocumented field
        assert body["data"]["call_id"] == str(call_id)


def test_the_campaign_completed_event_matches_its_schema():
    body = {"id": str(uuid.uuid4()), "type": "campaign.completed", "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {"campaign_id": str(uuid.uuid4()), "name": "Spring",
                     "contacts": dict.fromkeys(CONTACT_STATES, 0)}}
    CampaignCompletedEvent.model_validate(body)


# -- the explorer ------------------------------------------------------------------------------------


def test_docs_serves_the_explorer_and_its_files_from_our_origin(described):
    app, _ = described
    client = app.test_client()
    assert client.get("/docs").status_code in (301, 308)  # to /docs/
    page = client.get("/docs/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    assert '"validatorUrl": null' in html  # no badge from validator.swagger.io
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and not [s for s in sources if "//" in s], f"assets from another origin: {sources}"
    scripts = [s for s in sources if s.endswith(".js")]
    styles = [s for s in sources if s.endswith(".css")]
    assert "/docs/swagger-ui-bundle.js" in scripts and "/docs/swagger-ui.css" in styles
    for source in scripts + styles:
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert asset.mimetype in ("text/javascript", "application/javascript", "text/css"), (source, asset.mimetype)
        assert len(asset.get_data()) > 100
    assert client.get("/docs/no-such-file.js").status_code == 404
