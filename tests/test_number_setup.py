"""Numbers set up through the carrier, end to end against the carrier simulator: adding a
number checks that the agency's carrier account holds it and points its webhooks here;
the check reports a number whose carrier settings drifted; nothing is stored when the
carrier says no or does not answer; one agency cannot claim another's number."""
from __future__ import annotations

import hashlib
import json
import socket
import uuid

import pytest
import requests

from telephony import create_app
from telephony.auth import mint_token
from telephony.models import Role
from telephony.services.agencies import add_user, create_agency
from telephony.sim import carriers as carrier_sim_app
from telephony.sim.common import serve_in_thread
from tests.conftest import JWT_SECRET, Tenant
from tests.inbound_helpers import CARRIER_CREDENTIALS
from tests.outbound_helpers import inject

PUBLIC = "https://voice.example.test"  # the config fixture's PUBLIC_BASE_URL
NUMBER = "+14155550100"
CARRIERS = ("twilio", "telnyx", "plivo")
# Where each carrier should send the number's webhooks, by the kind the check reports.
EXPECTED = {
    "twilio": {"inbound": f"{PUBLIC}/webhooks/twilio/voice", "status": f"{PUBLIC}/webhooks/twilio/status"},
    "telnyx": {"call-control": f"{PUBLIC}/webhooks/telnyx/call-control"},  # the stored connection_id is Call Control
    "plivo": {"inbound": f"{PUBLIC}/webhooks/plivo/answer", "status": f"{PUBLIC}/webhooks/plivo/hangup"},
}
# Another agency's accounts, one per carrier.
OTHER_CREDENTIALS = {
    "twilio": {"account_sid": "AC" + "d" * 32, "auth_token": "other-twilio-token-000000000001"},
    "telnyx": {"api_key": "KEYOTHERAGENCY0000001", "connection_id": "9999"},
    "plivo": {"auth_id": "MA" + "C3" * 9, "auth_token": "other-plivo-token-0000000000001"},
}


# -- the simulator's inventories ------------------------------------------------------------


def _account(carrier: str, credentials: dict[str, str]) -> dict[str, str]:
    return {"api_key": credentials["api_key"]} if carrier == "telnyx" else \
        {"account": credentials["account_sid" if carrier == "twilio" else "auth_id"]}


def hold(sim, carrier: str, credentials: dict[str, str], e164: str = NUMBER, *, applications=(), **fields) -> None:
    """Put the number in the account (with its current settings), plus any applications."""
    body = {"carrier": carrier, **_account(carrier, credentials), "applications": list(applications),
            "numbers": [{"phone_number": e164, **fields}]}
    requests.post(f"{sim.base_url}/_sim/numbers", json=body, timeout=5).raise_for_status()


def hold_as_found(sim, carrier: str, credentials: dict[str, str], e164: str = NUMBER) -> None:
    """The number as an agency has it before using this service: pointing elsewhere, and
    (Telnyx) the agency's Call Control application, whose id is the stored connection_id."""
    elsewhere = "https://old-provider.example/voice"
    if carrier == "twilio":
        hold(sim, carrier, credentials, e164, voice_url=elsewhere, voice_application_sid="AP" + "1" * 32)
    elif carrier == "telnyx":
        hold(sim, carrier, credentials, e164, connection_id="5555",
             applications=[{"id": credentials["connection_id"], "kind": "call_control", "name": "Agency CC",
                            "webhook_event_url": elsewhere},
                           {"id": "5555", "kind": "texml", "name": "Old IVR", "voice_url": elsewhere}])
    else:
        hold(sim, carrier, credentials, e164, app_id="777",
             applications=[{"app_id": "777", "app_name": "Old IVR", "answer_url": elsewhere}])


def inventory(sim, carrier: str, credentials: dict[str, str]) -> dict:
    accounts = requests.get(f"{sim.base_url}/_sim/numbers", timeout=5).json()["accounts"]
    name = _account(carrier, credentials)
    wanted = name.get("account") or hashlib.sha256(name["api_key"].encode()).hexdigest()[:12]
    return next((a for a in accounts if a["carrier"] == carrier and a["account"] == wanted),
                {"numbers": [], "applications": []})


def routed_to(sim, carrier: str, credentials: dict[str, str], e164: str = NUMBER) -> dict[str, str | None]:
    """Where the simulated carrier would send the number's webhooks, read from its state
    (independently of the service's own reading)."""
    account = inventory(sim, carrier, credentials)
    number = next(n for n in account["numbers"] if n["phone_number"] == e164)
    apps = {str(a["id"]): a for a in account["applications"]}
    if carrier == "twilio":
        if number["voice_application_sid"] or number["trunk_sid"]:
            return {"inbound": "application", "status": "application"}
        return {"inbound": number["voice_url"], "status": number["status_callback"]}
    if carrier == "telnyx":
        app = apps.get(str(number["connection_id"]))
        if app is None:
            return {}
        if app["kind"] == "call_control":
            return {"call-control": app["webhook_event_url"]}
        return {"inbound": app["voice_url"], "status": app["status_callback"]}
    app = apps.get(str(number["app_id"]))
    return {} if app is None else {"inbound": app["answer_url"], "status": app["hangup_url"]}


def sim_requests(sim) -> list[dict]:
    return requests.get(f"{sim.base_url}/_sim/requests", timeout=5).json()["requests"]


# -- agencies ---------------------------------------------------------------------------------


def store(app, tenant, carrier: str, credentials: dict[str, str]) -> None:
    with app.app_context(), app.extensions["telephony.db"].session() as session:
        app.extensions["telephony.credentials"].set(session, tenant.agency_id, carrier, credentials)


@pytest.fixture
def sim_client(sim_app):
    return sim_app.test_client()


@pytest.fixture
def sim_tenant(sim_app):
    """make_tenant, on the app whose carriers are the simulator."""
    def make(name: str = "Agency") -> Tenant:
        suffix = uuid.uuid4().hex[:8]
        with sim_app.app_context(), sim_app.extensions["telephony.db"].session() as session:
            agency = create_agency(session, name, credit_balance=3600)
            add_user(session, auth_subject=f"admin-{suffix}", agency_id=agency.id, role=Role.admin)
            agency_id = agency.id
        return Tenant(agency_id=agency_id, admin_subject=f"admin-{suffix}", member_subject="",
                      admin_token=mint_token(JWT_SECRET, f"admin-{suffix}"), member_token="")

    return make


def add(client, tenant, carrier: str, e164: str = NUMBER, **extra):
    return client.post("/api/v1/phone-numbers", headers=tenant.admin(),
                       json={"e164": e164, "carrier": carrier, **extra})


def stored(client, tenant) -> list[str]:
    return [n["e164"] for n in client.get("/api/v1/phone-numbers", headers=tenant.admin()).json["phone_numbers"]]


# -- adding a number ---------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
def test_adding_a_number_points_its_webhooks_here(sim_app, sim_client, sim_tenant, carrier_sim, carrier):
    tenant = sim_tenant()
    credentials = CARRIER_CREDENTIALS[carrier]
    store(sim_app, tenant, carrier, credentials)
    hold_as_found(carrier_sim, carrier, credentials)
    assert routed_to(carrier_sim, carrier, credentials) != EXPECTED[carrier]

    created = add(sim_client, tenant, carrier)
    assert created.status_code == 201, created.json
    assert created.json["e164"] == NUMBER and created.json["carrier_setup"]["carrier_number_id"]
    assert created.json["carrier_setup"]["webhooks"] == EXPECTED[carrier]
    assert routed_to(carrier_sim, carrier, credentials) == EXPECTED[carrier]
    assert stored(sim_client, tenant) == [NUMBER]

    check = sim_client.get(f"/api/v1/phone-numbers/{created.json['id']}/check", headers=tenant.admin())
    assert check.status_code == 200
    assert check.json["in_account"] is True and check.json["points_here"] is True and check.json["problem"] is None
    assert check.json["current"] == EXPECTED[carrier]


@pytest.mark.parametrize("carrier", ("telnyx", "plivo"))
def test_an_application_of_the_agency_is_not_rewritten(sim_app, sim_client, sim_tenant, carrier_sim, carrier):
    """Telnyx without a stored Call Control connection, and Plivo: the number moves to this
    service's own application; the agency's old one (maybe shared by other numbers) keeps its URLs."""
    tenant = sim_tenant()
    credentials = {k: v for k, v in CARRIER_CREDENTIALS[carrier].items() if k != "connection_id"}
    store(sim_app, tenant, carrier, credentials)
    hold_as_found(carrier_sim, carrier, {**credentials, "connection_id": "4444"})
    before = {str(a["id"]): a for a in inventory(carrier_sim, carrier, credentials)["applications"]}

    assert add(sim_client, tenant, carrier).status_code == 201
    paths = {"telnyx": ("texml", "status"), "plivo": ("answer", "hangup")}[carrier]
    assert routed_to(carrier_sim, carrier, credentials) == {
        "inbound": f"{PUBLIC}/webhooks/{carrier}/{paths[0]}", "status": f"{PUBLIC}/webhooks/{carrier}/{paths[1]}"}
    after = {str(a["id"]): a for a in inventory(carrier_sim, carrier, credentials)["applications"]}
    assert all(after[app_id] == app for app_id, app in before.items())
    assert len(after) == len(before) + 1  # one of ours, created once...

    second = "+14155550177"
    hold(carrier_sim, carrier, credentials, second)
    assert add(sim_client, tenant, carrier, second).status_code == 201
    assert len(inventory(carrier_sim, carrier, credentials)["applications"]) == len(after)  # ...and reused


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_number_outside_the_account_is_422_and_nothing_is_stored(sim_app, sim_client, sim_tenant, carrier_sim,
                                                                   carrier):
    tenant = sim_tenant()
    store(sim_app, tenant, carrier, CARRIER_CREDENTIALS[carrier])
    hold(carrier_sim, carrier, CARRIER_CREDENTIALS[carrier], "+14155550999")  # the account holds another one
    refused = add(sim_client, tenant, carrier)
    assert refused.status_code == 422
    assert refused.json["code"] == "number_not_in_carrier_account" and "e164" in refused.json["fields"]
    assert stored(sim_client, tenant) == []


@pytest.mark.parametrize("carrier", CARRIERS)
def test_agency_b_cannot_claim_a_number_of_agency_a_account(sim_app, sim_client, sim_tenant, carrier_sim, carrier):
    """A's number, not yet registered here by A: B asks with B's own credentials, and
    B's account does not hold it. Nothing is stored and A's number is untouched."""
    a, b = sim_tenant("A"), sim_tenant("B")
    store(sim_app, a, carrier, CARRIER_CREDENTIALS[carrier])
    store(sim_app, b, carrier, OTHER_CREDENTIALS[carrier])
    hold_as_found(carrier_sim, carrier, CARRIER_CREDENTIALS[carrier])
    before = inventory(carrier_sim, carrier, CARRIER_CREDENTIALS[carrier])

    claimed = add(sim_client, b, carrier)
    assert claimed.status_code == 422 and claimed.json["code"] == "number_not_in_carrier_account"
    assert stored(sim_client, b) == []
    assert inventory(carrier_sim, carrier, CARRIER_CREDENTIALS[carrier]) == before
    # A, whose account holds it, can.
    assert add(sim_client, a, carrier).status_code == 201


@pytest.mark.parametrize("carrier", CARRIERS)
def test_an_unreachable_carrier_is_502_and_nothing_is_stored(sim_app, sim_client, sim_tenant, carrier_sim, carrier):
    tenant = sim_tenant()
    store(sim_app, tenant, carrier, CARRIER_CREDENTIALS[carrier])
    hold_as_found(carrier_sim, carrier, CARRIER_CREDENTIALS[carrier])
    prefix = {"twilio": "/2010-04-01/", "telnyx": "/v2/", "plivo": "/v1/"}[carrier]
    inject(carrier_sim, {"path_prefix": prefix, "mode": "unavailable", "status": 503, "count": 1})
    failed = add(sim_client, tenant, carrier)
    assert failed.status_code == 502 and failed.json["code"] == "carrier_unreachable"
    assert "nothing was stored" in failed.json["error"]
    assert stored(sim_client, tenant) == []
    # A later try goes through.
    assert add(sim_client, tenant, carrier).status_code == 201


def test_a_carrier_that_does_not_answer_at_all_is_502(config, tmp_path, make_tenant):
    """Nothing listens at the carrier's address (connection refused)."""
    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    app = create_app(config.with_overrides(twilio_api_base=dead, plivo_api_base=dead,
                                           telnyx_api_base=f"{dead}/v2"), instance_path=str(tmp_path / "dead"))
    tenant = make_tenant()
    try:
        for carrier in CARRIERS:
            store(app, tenant, carrier, CARRIER_CREDENTIALS[carrier])
            failed = add(app.test_client(), tenant, carrier)
            assert failed.status_code == 502 and failed.json["code"] == "carrier_unreachable", failed.json
        assert stored(app.test_client(), tenant) == []
    finally:
        app.extensions["telephony.db"].dispose()


@pytest.fixture
def strict_carrier_sim():
    """A carrier simulator that checks secrets, not only that they are present."""
    strict = carrier_sim_app.create_app(
        twilio_credentials={CARRIER_CREDENTIALS["twilio"]["account_sid"]: CARRIER_CREDENTIALS["twilio"]["auth_token"]},
        telnyx_api_keys={CARRIER_CREDENTIALS["telnyx"]["api_key"]},
        plivo_credentials={CARRIER_CREDENTIALS["plivo"]["auth_id"]: CARRIER_CREDENTIALS["plivo"]["auth_token"]})
    with serve_in_thread(strict) as handle:
        yield handle


@pytest.mark.parametrize("carrier", CARRIERS)
def test_wrong_credentials_are_a_clear_error(config, tmp_path, make_tenant, strict_carrier_sim, carrier):
    base = strict_carrier_sim.base_url
    app = create_app(config.with_overrides(twilio_api_base=base, plivo_api_base=base, telnyx_api_base=f"{base}/v2"),
                     instance_path=str(tmp_path / "strict"))
    tenant = make_tenant()
    wrong = {**CARRIER_CREDENTIALS[carrier], **{name: "wrong-secret-0000000000000000" for name in
                                                 ("auth_token", "api_key") if name in CARRIER_CREDENTIALS[carrier]}}
    try:
        store(app, tenant, carrier, wrong)
        refused = add(app.test_client(), tenant, carrier)
        assert refused.status_code == 422 and refused.json["code"] == "carrier_credentials_rejected"
        assert f"/api/v1/credentials/{carrier}" in refused.json["error"]
        assert "wrong-secret" not in refused.get_data(as_text=True)
        assert stored(app.test_client(), tenant) == []
    finally:
        app.extensions["telephony.db"].dispose()


def test_missing_credentials_are_400_before_any_carrier_request(sim_client, sim_tenant, carrier_sim):
    tenant = sim_tenant()
    refused = add(sim_client, tenant, "twilio")
    assert refused.status_code == 400 and refused.json["code"] == "carrier_credentials_missing"
    assert sim_requests(carrier_sim) == [] and stored(sim_client, tenant) == []


def test_the_opt_out_stores_the_number_without_asking_the_carrier(sim_app, sim_client, sim_tenant, carrier_sim):
    tenant = sim_tenant()
    store(sim_app, tenant, "twilio", CARRIER_CREDENTIALS["twilio"])
    created = add(sim_client, tenant, "twilio", configure_carrier=False)
    assert created.status_code == 201 and created.json["carrier_setup"] is None
    assert sim_requests(carrier_sim) == [] and stored(sim_client, tenant) == [NUMBER]


def test_our_own_refusals_come_before_the_carrier(sim_app, sim_client, sim_tenant, carrier_sim):
    """A number the agency has already, or another agency holds, never reaches the carrier."""
    a, b = sim_tenant("A"), sim_tenant("B")
    for tenant in (a, b):
        store(sim_app, tenant, "plivo", CARRIER_CREDENTIALS["plivo"])
    assert add(sim_client, a, "plivo", configure_carrier=False).status_code == 201
    assert add(sim_client, a, "plivo").status_code == 409
    held = add(sim_client, b, "plivo")
    assert held.status_code == 422 and held.json["code"] == "number_not_registrable"
    assert sim_requests(carrier_sim) == []


def test_a_localhost_public_base_url_is_refused(config, tmp_path, make_tenant, carrier_sim):
    base = carrier_sim.base_url
    app = create_app(config.with_overrides(public_base_url="http://localhost:8000", twilio_api_base=base),
                     instance_path=str(tmp_path / "local"))
    tenant = make_tenant()
    try:
        store(app, tenant, "twilio", CARRIER_CREDENTIALS["twilio"])
        hold(carrier_sim, "twilio", CARRIER_CREDENTIALS["twilio"])
        refused = add(app.test_client(), tenant, "twilio")
        assert refused.status_code == 422 and refused.json["code"] == "public_base_url_not_public"
        assert "PUBLIC_BASE_URL" in refused.json["error"] and sim_requests(carrier_sim) == []
    finally:
        app.extensions["telephony.db"].dispose()


# -- checking a number ---------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
def test_the_check_reports_a_number_that_no_longer_points_here(sim_app, sim_client, sim_tenant, carrier_sim, carrier):
    tenant = sim_tenant()
    credentials = CARRIER_CREDENTIALS[carrier]
    store(sim_app, tenant, carrier, credentials)
    hold_as_found(carrier_sim, carrier, credentials)
    number_id = add(sim_client, tenant, carrier).json["id"]
    path = f"/api/v1/phone-numbers/{number_id}/check"
    assert sim_client.get(path, headers=tenant.admin()).json["points_here"] is True

    hold_as_found(carrier_sim, carrier, credentials)  # someone set it back by hand in the carrier's console
    drifted = sim_client.get(path, headers=tenant.admin())
    assert drifted.status_code == 200
    assert drifted.json["in_account"] is True and drifted.json["points_here"] is False
    assert drifted.json["problem"] and drifted.json["current"] != EXPECTED[carrier]

    requests.post(f"{carrier_sim.base_url}/_sim/reset", timeout=5).raise_for_status()  # the account lost it
    gone = sim_client.get(path, headers=tenant.admin()).json
    assert gone["in_account"] is False and gone["points_here"] is False and "no longer holds" in gone["problem"]


def test_the_check_is_scoped_to_the_agency(sim_app, sim_client, sim_tenant, carrier_sim):
    a, b = sim_tenant("A"), sim_tenant("B")
    store(sim_app, b, "twilio", CARRIER_CREDENTIALS["twilio"])
    hold(carrier_sim, "twilio", CARRIER_CREDENTIALS["twilio"])
    number_b = add(sim_client, b, "twilio").json["id"]
    store(sim_app, a, "twilio", OTHER_CREDENTIALS["twilio"])
    before = len(sim_requests(carrier_sim))
    seen_by_a = sim_client.get(f"/api/v1/phone-numbers/{number_b}/check", headers=a.admin())
    missing = sim_client.get("/api/v1/phone-numbers/00000000-0000-0000-0000-000000000000/check", headers=a.admin())
    assert seen_by_a.status_code == missing.status_code == 404 and seen_by_a.json == missing.json
    assert len(sim_requests(carrier_sim)) == before  # nothing asked of anyone's carrier
    assert sim_client.get(f"/api/v1/phone-numbers/{number_b}/check", headers=b.admin()).json["points_here"] is True


def test_the_check_needs_the_admin_role(sim_client, sim_tenant):
    tenant = sim_tenant()
    response = sim_client.get("/api/v1/phone-numbers/00000000-0000-0000-0000-000000000000/check")
    assert response.status_code == 401
    assert sim_client.get("/api/v1/phone-numbers/00000000-0000-0000-0000-000000000000/check",
                          headers=tenant.admin()).status_code == 404


# -- the CLI ------------------------------------------------------------------------------------


def _cli(app, args, input=None):
    return app.test_cli_runner().invoke(args=args, input=input, catch_exceptions=False)


def _lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


def test_cli_adds_checks_lists_and_removes_through_the_carrier(sim_app, carrier_sim):
    agency = _lines(_cli(sim_app, ["agency", "create", "CLI"]))[0]["id"]
    credentials = CARRIER_CREDENTIALS["twilio"]
    _cli(sim_app, ["credentials", "set", "twilio", "--agency", agency],
         input="".join(f"{k}={v}\n" for k, v in credentials.items()))
    not_held = _cli(sim_app, ["number", "add", NUMBER, "--agency", agency, "--carrier", "twilio"])
    assert not_held.exit_code == 1 and "not in your Twilio account" in not_held.output

    hold_as_found(carrier_sim, "twilio", credentials)
    added = _lines(_cli(sim_app, ["number", "add", NUMBER, "--agency", agency, "--carrier", "twilio"]))[0]
    assert added["carrier_setup"]["webhooks"]["inbound"] == EXPECTED["twilio"]["inbound"]
    assert routed_to(carrier_sim, "twilio", credentials) == EXPECTED["twilio"]
    by_hand = _lines(_cli(sim_app, ["number", "add", "+14155550188", "--agency", agency, "--carrier", "twilio",
                                    "--no-carrier-setup"]))[0]
    assert by_hand["carrier_setup"] is None

    one = _cli(sim_app, ["number", "check", added["id"], "--agency", agency])
    assert one.exit_code == 0 and _lines(one)[0]["points_here"] is True
    every = _cli(sim_app, ["number", "check", "--agency", agency])  # the hand-made one is not in the account
    assert every.exit_code == 1
    assert {line["e164"]: line["in_account"] for line in _lines(every)} == {NUMBER: True, "+14155550188": False}

    plivo = _lines(_cli(sim_app, ["number", "add", "+14155550199", "--agency", agency, "--carrier", "plivo",
                                  "--no-carrier-setup"]))[0]
    unasked = _cli(sim_app, ["number", "check", "--agency", agency])  # no Plivo credentials: reported, not fatal
    assert unasked.exit_code == 1 and [line.get("code") for line in _lines(unasked)] == [
        None, None, "carrier_credentials_missing"]
    _cli(sim_app, ["number", "remove", plivo["id"], "--agency", agency])

    listed = _lines(_cli(sim_app, ["number", "list", "--agency", agency]))
    assert [n["e164"] for n in listed] == [NUMBER, "+14155550188"]
    assert _lines(_cli(sim_app, ["number", "remove", by_hand["id"], "--agency", agency]))[0]["removed"] is True
    assert [n["e164"] for n in _lines(_cli(sim_app, ["number", "list", "--agency", agency]))] == [NUMBER]


def test_cli_lists_and_removes_agents_and_users_of_one_agency_only(app):
    mine = _lines(_cli(app, ["agency", "create", "Mine"]))[0]["id"]
    theirs = _lines(_cli(app, ["agency", "create", "Theirs"]))[0]["id"]
    agent = _lines(_cli(app, ["agent", "add", "--agency", mine, "--name", "Reception",
                              "--ultravox-agent-id", "3c90c3cc-0d44-4b50-8888-8dd25736052a"]))[0]
    user = _lines(_cli(app, ["user", "add", "sub-mine", "--agency", mine, "--role", "admin"]))[0]
    assert [a["id"] for a in _lines(_cli(app, ["agent", "list", "--agency", mine]))] == [agent["id"]]
    assert [u["auth_subject"] for u in _lines(_cli(app, ["user", "list", "--agency", mine]))] == ["sub-mine"]
    assert _lines(_cli(app, ["agent", "list", "--agency", theirs])) == []
    assert _lines(_cli(app, ["user", "list", "--agency", theirs])) == []

    # Another agency's id removes nothing.
    wrong_agent = app.test_cli_runner().invoke(args=["agent", "remove", agent["id"], "--agency", theirs])
    wrong_user = app.test_cli_runner().invoke(args=["user", "remove", user["id"], "--agency", theirs])
    assert wrong_agent.exit_code == wrong_user.exit_code == 1 and "not found" in wrong_user.output
    assert len(_lines(_cli(app, ["agent", "list", "--agency", mine]))) == 1

    _cli(app, ["agent", "remove", agent["id"], "--agency", mine])
    _cli(app, ["user", "remove", user["id"], "--agency", mine])
    assert _lines(_cli(app, ["agent", "list", "--agency", mine])) == []
    assert _lines(_cli(app, ["user", "list", "--agency", mine])) == []


# -- the simulator's control endpoint ----------------------------------------------------------


def test_sim_number_inventories_are_per_account_reset_and_never_show_a_key(carrier_sim):
    key = CARRIER_CREDENTIALS["telnyx"]["api_key"]
    hold(carrier_sim, "telnyx", CARRIER_CREDENTIALS["telnyx"])
    hold(carrier_sim, "twilio", CARRIER_CREDENTIALS["twilio"])
    shown = requests.get(f"{carrier_sim.base_url}/_sim/numbers", timeout=5)
    assert key not in shown.text and len(shown.json()["accounts"]) == 2
    assert inventory(carrier_sim, "twilio", OTHER_CREDENTIALS["twilio"])["numbers"] == []
    for bad in ({"carrier": "vonage"}, {"carrier": "twilio"}, {"carrier": "telnyx", "account": "x"},
                {"carrier": "plivo", "account": "MA1", "numbers": [{"phone_number": "14155550100"}]}):
        assert requests.post(f"{carrier_sim.base_url}/_sim/numbers", json=bad, timeout=5).status_code == 400
    requests.post(f"{carrier_sim.base_url}/_sim/reset", timeout=5).raise_for_status()
    assert requests.get(f"{carrier_sim.base_url}/_sim/numbers", timeout=5).json() == {"accounts": []}
