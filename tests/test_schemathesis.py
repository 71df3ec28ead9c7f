"""Property-based API test: schemathesis generates requests from /openapi.json
and runs them in-process against the Flask app (WSGI), whose Ultravox is the
local simulator. No response may be a 5xx, and responses must match the
documented status codes, content types and schemas.

Covered: the web-call endpoints, the recording link, public keys and the
management API (see COVERED_PATHS). Requests carry a real admin token
(or, for the public endpoint, a real public key and agent), and bodies that
name an agent name the real one, so generated input reaches the code behind
authentication and lookups. Examples per operation are bounded, and one app
per database serves every operation, to keep the run well under a minute.
"""
from __future__ import annotations

import uuid

import pytest
import requests
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from telephony import create_app
from telephony.auth import mint_token
from telephony.config import Config
from telephony.models import Call, Role
from telephony.services.agencies import add_user, create_agency
from tests.conftest import JWT_SECRET, _clean
from tests.test_web_calls import ULTRAVOX_KEY, UV_AGENT, setup_agency

MAX_EXAMPLES = 10
# The web-call endpoints, the recording link, public keys and the management
# API. Other /api/v1 resources (call history, event endpoints, ...) belong to
# other features and their tests; event endpoints would also make the app
# look up generated host names, and this test must stay on 127.0.0.1.
COVERED_PATHS = (r"^/(functions/v1/|calls/public/|recordings/|api/v1/calls/websocket$|"
                 r"api/v1/(me|agents|phone-numbers|credentials|api-keys|public-keys|calls|event-endpoints)(/|$))")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _load_schema():
    """The document /openapi.json serves. It depends on the routes only, so an
    app that never touches its database builds it at import time; that gives
    one test per operation (schemathesis' lazy fixture loader does not work
    with pytest 9)."""
    app = create_app(Config(database_url="sqlite://", credentials_keys=(Fernet.generate_key().decode(),)))
    with app.test_client() as client:
        document = client.get("/openapi.json").json
    app.extensions["telephony.db"].dispose()
    return schemathesis.openapi.from_dict(document).include(path_regex=COVERED_PATHS)


schema = _load_schema()


class _Admin:
    def __init__(self, token: str) -> None:
        self.token = token

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_target(request, tmp_path_factory, _ultravox_sim_server, _carrier_sim_server):
    """One app per database, pointed at the simulators, with an agency that
    can place calls. Module-scoped: building it per operation would double
    the run time."""
    url = request.getfixturevalue(f"{request.param}_url")
    _clean(url)
    requests.post(f"{_ultravox_sim_server.base_url}/_sim/reset", timeout=5).raise_for_status()
    config = Config(database_url=url, public_base_url="https://voice.example.test",
                    credentials_keys=(Fernet.generate_key().decode(),), jwt_secret=JWT_SECRET,
                    ultravox_api_base=_ultravox_sim_server.base_url, twilio_api_base=_carrier_sim_server.base_url,
                    telnyx_api_base=f"{_carrier_sim_server.base_url}/v2", plivo_api_base=_carrier_sim_server.base_url)
    app = create_app(config, instance_path=str(tmp_path_factory.mktemp("fuzz-instance")))
    app.config["TESTING"] = True
    subject = f"fuzz-admin-{uuid.uuid4().hex[:8]}"
    with app.extensions["telephony.db"].session() as session:
        agency = create_agency(session, "Fuzz", credit_balance=3600)
        add_user(session, auth_subject=subject, agency_id=agency.id, role=Role.admin)
    admin = _Admin(mint_token(JWT_SECRET, subject))
    client = app.test_client()
    agent = setup_agency(client, admin, recording=True)
    public_key = client.post("/api/v1/public-keys", headers=admin.admin(),
                             json={"name": "fuzz", "agent_ids": [agent["id"]], "rate_limit_per_minute": 10_000})
    assert public_key.status_code == 201
    # An ended call with a recording, for get-call-recording to find.
    created = client.post("/functions/v1/calls-create", json={"agent_id": UV_AGENT}, headers=admin.admin())
    assert created.status_code == 201
    requests.post(f"{_ultravox_sim_server.base_url}/_sim/calls/{created.json['ultravox_call_id']}/end", json={},
                  timeout=5).raise_for_status()
    with app.extensions["telephony.db"].session() as session:
        session.get(Call, uuid.UUID(created.json["call_id"])).has_recording = True
    yield {"app": app, "admin": admin.admin(), "agent_id": agent["id"], "public_key": public_key.json["key"],
           "call_id": created.json["call_id"]}
    app.extensions["telephony.db"].dispose()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_no_server_errors(case, fuzz_target):
    app, headers = fuzz_target["app"], fuzz_target["admin"]
    if case.path == "/calls/public/create-web-call":
        headers = {"x-api-access-key": fuzz_target["public_key"], "voicehub-agent-id": UV_AGENT}
    if isinstance(case.body, dict):
        # Name the real agent, so valid bodies start real (simulated) calls
        # and public keys get created; unknown agents are unit-tested elsewhere.
        if "agent_id" in case.body and case.path in ("/functions/v1/calls-create", "/api/v1/calls/websocket"):
            case.body["agent_id"] = UV_AGENT
        if isinstance(case.body.get("agent_ids"), list) and case.body["agent_ids"]:
            case.body["agent_ids"] = [fuzz_target["agent_id"]]
    if case.path == "/functions/v1/get-call-recording" and isinstance((case.query or {}).get("call_id"), str):
        case.query["call_id"] = fuzz_target["call_id"]
    case.call_and_validate(app=app, headers=headers, checks=CHECKS)
    if case.path.startswith("/api/v1/credentials"):
        # Generated credentials may replace or delete the agency's Ultravox
        # key; put it back so the call endpoints fuzzed later can start calls.
        app.test_client().put("/api/v1/credentials/ultravox", json={"api_key": ULTRAVOX_KEY}, headers=headers)
