"""Each carrier is described once (telephony/carriers/spec.py, at the end of its module)
and listed once (carriers/registry.py); everything else derives from the app's registry.

The last part registers a fourth, fake carrier the way a real one would be added (one
description, one more registry entry) and shows that the credential store, the
management API, the webhook routes and the medium lookup take it up with no other
change. What it cannot show: the database stores carrier names in CHECK-constrained
columns (phone_numbers.carrier, calls.source), so a number or a call of the fake carrier
cannot be stored; a real new carrier also needs its enum values and a migration, which
the agreement test below demands.
"""
from __future__ import annotations

import ast
import hashlib
import hmac
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode
from xml.sax.saxutils import escape

import pytest
from werkzeug.datastructures import Headers, MultiDict

from telephony import create_app
from telephony.api.management import CarrierName
from telephony.api.openapi import build_openapi
from telephony.carriers.base import (
    CarrierDialer,
    InboundCall,
    OutboundDial,
    StatusEvent,
    WebhookRequest,
    XmlCarrierAdapter,
)
from telephony.carriers.registry import CARRIERS, CarrierRegistry, get_carriers
from telephony.carriers.spec import CarrierSpec, CredentialField
from telephony.config import Config
from telephony.credentials import PROVIDER_FIELDS, CredentialStore, UnknownCredential, provider_fields
from telephony.models import CallSource, Carrier
from telephony.services import carrier_webhooks
from telephony.services.carrier_webhooks import SignatureRejected
from telephony.services.ultravox_events import MEDIUM_SOURCES

NAMES = ("twilio", "telnyx", "plivo")

# -- the three carriers, as the service has always known them -------------------------------


def test_the_registry_lists_the_three_carriers_in_order():
    assert tuple(carrier.name for carrier in CARRIERS) == NAMES
    assert CarrierRegistry().names == NAMES


def test_the_databases_enums_agree_with_the_registry():
    """Carrier and CallSource are stored (CHECK-constrained strings): a carrier added to
    the registry needs its enum values and a migration too."""
    names = {carrier.name for carrier in CARRIERS}
    assert {value.value for value in Carrier} == names
    assert {value.value for value in CallSource} - names == {"webrtc", "websocket"}
    assert set(CarrierName.__args__) == names  # type: ignore[attr-defined]


def test_each_carriers_medium_maps_to_its_call_source():
    registry = CarrierRegistry()
    for carrier in CARRIERS:
        assert carrier.medium == {carrier.name: {}}
        assert MEDIUM_SOURCES[carrier.medium_name] == CallSource(carrier.name)
        assert registry.by_medium(carrier.medium) is carrier
        assert registry.by_medium(carrier.medium_name) is carrier
    assert MEDIUM_SOURCES["webRtc"] == CallSource.webrtc
    assert MEDIUM_SOURCES["serverWebSocket"] == CallSource.websocket
    for other in ({"webRtc": {}}, {"sip": {"outgoing": {}}}, {}, None, "serverWebSocket"):
        assert registry.by_medium(other) is None


def test_credential_fields_are_unchanged():
    assert PROVIDER_FIELDS == {"ultravox": ("api_key", "webhook_secret"), "twilio": ("account_sid", "auth_token"),
                               "telnyx": ("api_key", "public_key", "connection_id"),
                               "plivo": ("auth_id", "auth_token")}
    required = {carrier.name: carrier.required_credentials for carrier in CARRIERS}
    assert required == {"twilio": ("account_sid", "auth_token"), "telnyx": ("api_key", "connection_id"),
                        "plivo": ("auth_id", "auth_token")}


def test_a_dialers_account_name_is_never_a_secret():
    """The account names a rate-limit bucket: no secret field may show in it."""
    registry = CarrierRegistry()
    for carrier in CARRIERS:
        credentials = {name: f"{carrier.name}-{name}-{uuid.uuid4().hex}" for name in carrier.credential_names}
        account = registry.dialer(carrier.name).account(credentials)
        assert account
        for name in carrier.secret_credentials:
            assert credentials[name] not in account


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda carrier: carrier.name)
def test_each_api_base_setting_is_a_config_variable(carrier, tmp_path):
    assert carrier.api_base_setting in Config.__dataclass_fields__
    variable = carrier.api_base_setting.upper()  # e.g. TWILIO_API_BASE
    config = Config.from_env({variable: "http://127.0.0.1:9999/x/"}, instance_path=tmp_path)
    assert carrier.api_base(config) == "http://127.0.0.1:9999/x"


def test_the_webhook_urls_are_unchanged(app):
    webhooks = {rule.rule: (rule.endpoint, rule.methods - {"HEAD", "OPTIONS"}) for rule in app.url_map.iter_rules()
                if rule.rule.startswith("/webhooks/") and not rule.rule.startswith("/webhooks/outbound/")
                and not rule.rule.startswith("/webhooks/ultravox")
                and not rule.rule.startswith("/webhooks/transfers/")}  # per-transfer URLs we hand the carrier
    assert webhooks == {
        "/webhooks/twilio/voice": ("webhooks.twilio_voice", {"POST"}),
        "/webhooks/twilio/status": ("webhooks.twilio_status", {"POST"}),
        "/webhooks/telnyx/texml": ("webhooks.telnyx_texml", {"POST"}),
        "/webhooks/telnyx/status": ("webhooks.telnyx_status", {"POST"}),
        "/webhooks/telnyx/call-control": ("webhooks.telnyx_call_control", {"POST"}),
        "/webhooks/plivo/answer": ("webhooks.plivo_answer", {"POST"}),
        "/webhooks/plivo/hangup": ("webhooks.plivo_hangup", {"POST"}),
    }


def test_the_credential_routes_are_unchanged(app):
    rules = {(rule.rule, method) for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/v1/credentials")
             for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert rules == {("/api/v1/credentials", "GET")} | {(f"/api/v1/credentials/{provider}", method)
                                                        for provider in ("ultravox", *NAMES)
                                                        for method in ("PUT", "DELETE")}
    schemas = build_openapi(app)["components"]["schemas"]
    assert list(schemas["CredentialsOut"]["properties"]) == ["ultravox", *NAMES]
    assert list(schemas["TelnyxCredentialsIn"]["properties"]) == ["api_key", "public_key", "connection_id"]


# -- built from plain settings, once per app ----------------------------------------------------


def test_the_registry_is_built_from_the_config_without_an_app():
    registry = CarrierRegistry.from_config(Config(database_url="sqlite://", telnyx_stream_codec="PCMA"))
    assert registry.settings.telnyx_codec == "PCMA" and registry.settings.telnyx_sampling_rate == 8000
    xml = registry.xml_adapter("telnyx").stream_response("wss://example.test/s")  # no app context here
    assert 'codec="PCMA"' in xml and 'bidirectionalSamplingRate="8000"' in xml
    assert registry.call_control("telnyx").stream_format() == ("PCMA", 8000)
    assert registry.dialer("telnyx").stream_format() == ("PCMA", 8000)
    assert CarrierRegistry().xml_adapter("telnyx").stream_format() == ("L16", 16000)


def test_each_app_keeps_its_own_registry(app, config, tmp_path):
    assert get_carriers(app) is app.extensions["telephony.carriers"]
    with app.app_context():
        assert get_carriers() is get_carriers(app)
    other = create_app(config.with_overrides(telnyx_stream_codec="PCMU"), instance_path=str(tmp_path / "other"))
    try:
        assert get_carriers(other).call_control("telnyx").stream_format() == ("PCMU", 8000)
        assert get_carriers(app).call_control("telnyx").stream_format() == ("L16", 16000)
    finally:
        other.extensions["telephony.db"].dispose()


def test_carrier_modules_do_not_read_the_app():
    """Adapters, dialers and SDK factories take plain values: no carrier module imports
    Flask or the app accessors (only registry.get_carriers reads the current app)."""
    folder = Path(__file__).resolve().parent.parent / "telephony" / "carriers"
    for path in folder.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
        forbidden = {name for name in imported if name == "flask" or name.endswith("context")}
        allowed = {"flask"} if path.name == "registry.py" else set()  # get_carriers: the current app's registry
        assert forbidden <= allowed, f"{path.name} imports {forbidden}"


def test_a_registry_refuses_ambiguous_carriers():
    with pytest.raises(ValueError, match="listed twice"):
        CarrierRegistry((*CARRIERS, CARRIERS[0]))
    with pytest.raises(ValueError, match="medium"):
        CarrierRegistry((*CARRIERS, replace(FAKE, medium_name="twilio")))
    with pytest.raises(ValueError, match="webhook path"):
        CarrierRegistry((replace(FAKE, status_path=FAKE.inbound_path),))
    with pytest.raises(ValueError, match="serves carrier"):
        CarrierRegistry((replace(FAKE, adapter=CARRIERS[0].adapter),))
    with pytest.raises(ValueError, match="repeat"):
        replace(FAKE, credentials=(CredentialField("key"), CredentialField("key")))


# -- a fourth carrier: one description, one more registry entry ---------------------------------

SIGNATURE_HEADER = "X-Fake-Signature"


def fake_signature(key: str, url: str, body: bytes) -> str:
    return hmac.new(key.encode(), url.encode() + b"\n" + body, hashlib.sha256).hexdigest()


class FakeAdapter(XmlCarrierAdapter):
    """A made-up carrier: form fields, HMAC-SHA256 over URL and body, its own XML."""

    name = "fakecarrier"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (what, carrier call id) of each request parsed

    def verify(self, request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
        key, signature = credentials.get("signing_key"), request.headers.get(SIGNATURE_HEADER)
        if not key or not signature:
            return False
        return hmac.compare_digest(signature, fake_signature(key, request.public_url, request.body))

    def parse_inbound(self, request: WebhookRequest) -> InboundCall:
        self.seen.append(("inbound", request.field("CallId")))
        return InboundCall(request.field("CallId"), request.field("Caller"), request.field("Called"))

    def parse_status(self, request: WebhookRequest) -> StatusEvent | None:
        self.seen.append(("status", request.field("CallId")))
        return None  # nothing tracked: the status column is keyed by CallSource, which has no fake value

    def stream_response(self, join_url: str) -> str:
        return f'<FakeXml><Stream url="{escape(join_url)}"/></FakeXml>'

    def say_and_hangup(self, message: str) -> str:
        return f"<FakeXml><Say>{escape(message)}</Say><Hangup/></FakeXml>"

    def dial_fallback(self, number: str) -> str:
        return f"<FakeXml><Dial>{escape(number)}</Dial></FakeXml>"


class FakeDialer(CarrierDialer):
    name = "fakecarrier"
    sdk_client = staticmethod(lambda *args, **kwargs: object())

    def account(self, credentials: Mapping[str, str]) -> str:
        return credentials["account_id"]

    def secrets(self, credentials: Mapping[str, str]) -> tuple[str, ...]:
        return (credentials["signing_key"],)

    def place_call(self, client: Any, credentials: Mapping[str, str], dial: OutboundDial) -> str:
        raise NotImplementedError("not dialled in these tests")


FAKE = CarrierSpec(
    name="fakecarrier", title="Fakecarrier",
    credentials=(CredentialField("account_id", secret=False), CredentialField("signing_key")),
    api_base_setting="twilio_api_base",  # any Config field; nothing is dialled here
    adapter=FakeAdapter, dialer=FakeDialer,
    inbound_path="incoming", status_path="events",
)


@pytest.fixture
def fake_app(config, tmp_path):
    app = create_app(config, instance_path=str(tmp_path / "fake"),
                     carriers=CarrierRegistry.from_config(config, (*CARRIERS, FAKE)))
    app.config["TESTING"] = True
    yield app
    app.extensions["telephony.db"].dispose()


def test_the_fake_carrier_is_one_more_registry_entry(config):
    registry = CarrierRegistry.from_config(config).with_carrier(FAKE)
    assert registry.names == (*NAMES, "fakecarrier")
    assert registry.by_name("fakecarrier") is FAKE
    assert isinstance(registry.xml_adapter("fakecarrier"), FakeAdapter)
    assert isinstance(registry.dialer("fakecarrier"), FakeDialer)
    assert provider_fields(registry)["fakecarrier"] == ("account_id", "signing_key")
    assert FAKE.required_credentials == ("account_id", "signing_key") and FAKE.secret_credentials == ("signing_key",)


def test_the_fake_carriers_medium_maps_back_to_it(fake_app):
    carriers = get_carriers(fake_app)
    assert FAKE.medium == {"fakecarrier": {}}
    assert carriers.by_medium({"fakecarrier": {}}) is FAKE
    assert carriers.by_medium("fakecarrier").name == "fakecarrier"
    assert CarrierRegistry().by_medium({"fakecarrier": {}}) is None


def test_the_credential_store_takes_the_fake_carriers_fields(fake_app, make_tenant):
    agency_id = make_tenant().agency_id
    store: CredentialStore = fake_app.extensions["telephony.credentials"]
    with fake_app.app_context(), fake_app.extensions["telephony.db"].session() as session:
        store.set(session, agency_id, "fakecarrier", {"account_id": "FA-123", "signing_key": "s" * 16})
        assert dict(store.get(session, agency_id, "fakecarrier")) == {"account_id": "FA-123",
                                                                      "signing_key": "s" * 16}
        with pytest.raises(UnknownCredential):
            store.set(session, agency_id, "fakecarrier", {"auth_token": "x"})
        assert store.describe(session, agency_id)["fakecarrier"]["signing_key"] == {"set": True, "last4": "ssss"}
        three_carriers = CredentialStore(fake_app.extensions["telephony.config"].credentials_keys)
        with pytest.raises(UnknownCredential):  # the default store has no such provider
            three_carriers.set(session, agency_id, "fakecarrier", {"account_id": "FA-123"})


def test_the_management_api_validates_the_fake_carriers_credentials(fake_app, app, make_tenant):
    tenant = make_tenant()
    client = fake_app.test_client()
    put = client.put("/api/v1/credentials/fakecarrier", json={"account_id": "FA-123", "signing_key": "k" * 20},
                     headers=tenant.admin())
    assert put.status_code == 200, put.json
    assert put.json["fakecarrier"] == {"account_id": {"set": True, "last4": ""},
                                       "signing_key": {"set": True, "last4": "kkkk"}}
    assert list(put.json) == ["ultravox", *NAMES, "fakecarrier"]
    wrong = client.put("/api/v1/credentials/fakecarrier", json={"auth_token": "x" * 20}, headers=tenant.admin())
    assert wrong.status_code == 400 and "auth_token" in wrong.json["fields"]
    empty = client.put("/api/v1/credentials/fakecarrier", json={"signing_key": ""}, headers=tenant.admin())
    assert empty.status_code == 400 and "signing_key" in empty.json["fields"]
    assert client.get("/api/v1/credentials", headers=tenant.admin()).json["fakecarrier"]["account_id"]["set"]
    assert client.delete("/api/v1/credentials/fakecarrier", headers=tenant.admin()).status_code == 204
    assert not client.get("/api/v1/credentials", headers=tenant.admin()).json["fakecarrier"]["account_id"]["set"]

    document = build_openapi(fake_app)
    assert "/api/v1/credentials/fakecarrier" in document["paths"]
    assert list(document["components"]["schemas"]["FakecarrierCredentialsIn"]["properties"]) == [
        "account_id", "signing_key"]
    assert "Twilio, Telnyx, Plivo and Fakecarrier" in document["info"]["description"]
    # The app of the three carriers knows nothing of it.
    other = app.test_client().put("/api/v1/credentials/fakecarrier", json={"account_id": "FA-1"},
                                  headers=tenant.admin())
    assert other.status_code in (404, 405)
    assert "Twilio, Telnyx and Plivo," in build_openapi(app)["info"]["description"]


def test_the_fake_carriers_webhooks_reach_its_adapter(fake_app, app):
    routes = {rule.rule: rule.endpoint for rule in fake_app.url_map.iter_rules()
              if rule.rule.startswith("/webhooks/fakecarrier")}
    assert routes == {"/webhooks/fakecarrier/incoming": "webhooks.fakecarrier_incoming",
                      "/webhooks/fakecarrier/events": "webhooks.fakecarrier_events"}
    adapter = get_carriers(fake_app).xml_adapter("fakecarrier")
    base = fake_app.extensions["telephony.config"].public_base_url
    body = urlencode({"CallId": "fake-call-1", "Caller": "+14155550199", "Called": "+14155550100"}).encode()
    headers = {SIGNATURE_HEADER: fake_signature("k" * 20, f"{base}/webhooks/fakecarrier/incoming", body)}
    client = fake_app.test_client()

    answer = client.post("/webhooks/fakecarrier/incoming", data=body, headers=headers,
                         content_type="application/x-www-form-urlencoded")
    # Answered in the fake carrier's own XML. Not which message: a number of the fake
    # carrier cannot be stored (phone_numbers.carrier is an enum of the three), so the
    # lookup by carrier fails and the service's catch-all apologises.
    assert answer.status_code == 200 and answer.mimetype == "text/xml"
    assert answer.get_data(as_text=True).startswith("<FakeXml><Say>")
    status = client.post("/webhooks/fakecarrier/events", data=urlencode({"CallId": "fake-call-1"}),
                         content_type="application/x-www-form-urlencoded")
    assert status.status_code == 204
    assert adapter.seen == [("inbound", "fake-call-1"), ("status", "fake-call-1")]
    # Not a route of the app of the three carriers.
    assert app.test_client().post("/webhooks/fakecarrier/incoming", data=body, headers=headers,
                                  content_type="application/x-www-form-urlencoded").status_code == 404


def test_the_fake_carriers_signature_is_checked_with_its_stored_credentials(fake_app, make_tenant):
    """The signature check the webhooks run once they know the agency (it comes after the
    number lookup, which cannot find a fake carrier's number: the check is run directly)."""
    agency_id = make_tenant().agency_id
    adapter = get_carriers(fake_app).xml_adapter("fakecarrier")
    url, body = "https://voice.example.test/webhooks/fakecarrier/incoming", b"CallId=fake-call-2"

    def request(signature: str) -> WebhookRequest:
        return WebhookRequest(method="POST", public_url=url, headers=Headers({SIGNATURE_HEADER: signature}),
                              form=MultiDict({"CallId": "fake-call-2"}), body=body)

    with fake_app.app_context(), fake_app.extensions["telephony.db"].session() as session:
        fake_app.extensions["telephony.credentials"].set(session, agency_id, "fakecarrier",
                                                         {"account_id": "FA-9", "signing_key": "right-key"})
        session.commit()
        verified = carrier_webhooks.verified_credentials(
            session, adapter, request(fake_signature("right-key", url, body)), agency_id)
        assert dict(verified) == {"account_id": "FA-9", "signing_key": "right-key"}
        with pytest.raises(SignatureRejected):
            carrier_webhooks.verified_credentials(session, adapter, request(fake_signature("wrong-key", url, body)),
                                             agency_id)
