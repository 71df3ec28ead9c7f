"""Event endpoints API and the outbox: Standard Webhooks signatures, retries, restarts, tenancy."""
import base64
import json
import uuid
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text, update

from telephony import create_app
from telephony.credentials import CredentialError
from telephony.models import EventDelivery, EventEndpoint, Job, utcnow
from telephony.services import events
from telephony.services.event_endpoints import reseal_secrets
from telephony.services.events import emit_call_event, emit_event
from telephony.worker import Worker

from .lifecycle_support import (
    add_call,
    get_call,
    our_metadata,
    post_webhook,
    set_ultravox_credentials,
    snapshot,
    verify_standard_webhook,
)

pytestmark = pytest.mark.private_event_endpoints

ALL_EVENTS = ["call.started", "call.answered", "call.ended", "call.failed", "campaign.completed"]


def _create(client, tenant, url: str, events_: list[str] | None = None, **extra):
    return client.post("/api/v1/event-endpoints", json={"url": url, "events": events_ or ALL_EVENTS, **extra},
                       headers=tenant.admin())


def _emit(app, db, agency_id, event_type: str = "call.ended", data: dict | None = None) -> None:
    with app.app_context(), db.session() as session:
        emit_event(session, agency_id, event_type, data or {"call_id": "c-1"})


def _deliveries(client, tenant, endpoint_id, **params) -> list[dict]:
    response = client.get(f"/api/v1/event-endpoints/{endpoint_id}/deliveries", query_string=params,
                          headers=tenant.admin())
    assert response.status_code == 200, response.json
    return response.json["deliveries"]


def _make_due(db) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.status == "queued").values(run_at=utcnow()))


# -- the endpoints API -------------------------------------------------------------------------------

def test_endpoint_crud_with_the_secret_shown_once(client, make_tenant):
    tenant = make_tenant()
    created = _create(client, tenant, "https://hooks.example.com/telephony", ["call.ended", "call.ended"])
    assert created.status_code == 201
    endpoint = created.json
    secret = endpoint.pop("secret")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert endpoint["events"] == ["call.ended"] and endpoint["enabled"] is True
    listed = client.get("/api/v1/event-endpoints", headers=tenant.admin()).json["event_endpoints"]
    assert listed == [endpoint] and secret not in json.dumps(listed)
    got = client.get(f"/api/v1/event-endpoints/{endpoint['id']}", headers=tenant.admin()).json
    assert got == endpoint
    patched = client.patch(f"/api/v1/event-endpoints/{endpoint['id']}", headers=tenant.admin(),
                           json={"events": ["call.started", "call.failed"], "enabled": False})
    assert patched.status_code == 200 and patched.json["events"] == ["call.started", "call.failed"]
    assert patched.json["enabled"] is False and patched.json["url"] == "https://hooks.example.com/telephony"
    rotated = client.post(f"/api/v1/event-endpoints/{endpoint['id']}/rotate-secret", headers=tenant.admin())
    assert rotated.status_code == 200 and rotated.json["secret"] != secret
    assert rotated.json["previous_secret_expires_at"] is not None
    assert client.delete(f"/api/v1/event-endpoints/{endpoint['id']}", headers=tenant.admin()).status_code == 204
    assert client.get(f"/api/v1/event-endpoints/{endpoint['id']}", headers=tenant.admin()).status_code == 404


def test_secrets_are_sealed_at_rest_and_bound_to_their_endpoint(app, client, db, make_tenant):
    tenant = make_tenant()
    first = _create(client, tenant, "http://127.0.0.1:9/a").json
    second = _create(client, tenant, "http://127.0.0.1:9/b").json
    with db.engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_ciphertext FROM event_endpoints")).scalars().all()
    assert first["secret"] not in " ".join(stored) and first["secret"][6:20] not in " ".join(stored)
    store = app.extensions["telephony.credentials"]
    with db.session() as session:
        row = session.get(EventEndpoint, uuid.UUID(first["id"]))
        assert store.unseal(tenant.agency_id, events.sealed_purpose(row.id), row.secret_ciphertext) == first["secret"]
        # Copied to another endpoint or read as another agency's, the ciphertext is refused.
        with pytest.raises(CredentialError):
            store.unseal(tenant.agency_id, events.sealed_purpose(uuid.UUID(second["id"])), row.secret_ciphertext)
        with pytest.raises(CredentialError):
            store.unseal(uuid.uuid4(), events.sealed_purpose(row.id), row.secret_ciphertext)


def test_endpoint_secrets_follow_a_credentials_key_rotation(config, tmp_path, client, db, make_tenant, receiver):
    tenant = make_tenant()
    created = _create(client, tenant, receiver.url).json
    client.post(f"/api/v1/event-endpoints/{created['id']}/rotate-secret", headers=tenant.admin())
    new_key = Fernet.generate_key().decode()
    both = create_app(config.with_overrides(credentials_keys=(new_key, *config.credentials_keys)),
                      instance_path=str(tmp_path / "both"))
    only_new = create_app(config.with_overrides(credentials_keys=(new_key,)), instance_path=str(tmp_path / "new"))
    try:
        with both.app_context(), db.session() as session:
            assert reseal_secrets(session) == 1
        _emit(only_new, db, tenant.agency_id)
        Worker(only_new).run_once()  # the old key is gone; the secrets still open
        [delivery] = _deliveries(client, tenant, created["id"])
        assert delivery["status"] == "delivered"
        assert len(receiver.requests[0][0]["webhook-signature"].split()) == 2
    finally:
        both.extensions["telephony.db"].dispose()
        only_new.extensions["telephony.db"].dispose()


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://hooks.example.com/x", "events": ["call.ended"]}, "url"),
    ({"url": "https://user:pw@hooks.example.com/x", "events": ["call.ended"]}, "url"),
    ({"url": "not a url", "events": ["call.ended"]}, "url"),
    ({"url": "https://hooks.example.com:99999/x", "events": ["call.ended"]}, "url"),
    ({"url": "https://hooks.example.com/x#frag", "events": ["call.ended"]}, "url"),
    ({"url": "https://hooks.example.com/x", "events": []}, "events"),
    ({"url": "https://hooks.example.com/x", "events": ["call.exploded"]}, "events.0"),
    ({"url": "https://hooks.example.com/x"}, "events"),
    ({"url": "https://hooks.example.com/x", "events": ["call.ended"], "secret": "mine"}, "secret"),
])
def test_invalid_endpoints_are_400(client, make_tenant, body, field):
    tenant = make_tenant()
    response = client.post("/api/v1/event-endpoints", json=body, headers=tenant.admin())
    assert response.status_code == 400 and field in response.json["fields"], response.json


@pytest.mark.parametrize("url, ok", [("https://hooks.example.com/x", True), ("http://hooks.example.com/x", False),
                                     ("https://127.0.0.1/x", False), ("https://localhost/x", False),
                                     ("https://10.1.2.3/x", False), ("https://[::1]/x", False),
                                     ("https://169.254.169.254/latest", False)])
def test_production_accepts_only_public_https(config, tmp_path, make_tenant, url, ok):
    production = create_app(config.with_overrides(production=True, event_endpoints_allow_private=False),
                            instance_path=str(tmp_path / "prod"))
    try:
        tenant = make_tenant()
        response = _create(production.test_client(), tenant, url)
        assert response.status_code == (201 if ok else 400), response.json
    finally:
        production.extensions["telephony.db"].dispose()


def test_admin_scope_is_required(client, make_tenant):
    tenant = make_tenant()
    assert client.get("/api/v1/event-endpoints", headers=tenant.member()).status_code == 403
    assert _create(client, tenant, "https://hooks.example.com/x").status_code == 201
    assert client.post("/api/v1/event-endpoints", json={"url": "https://h.example.com", "events": ["call.ended"]},
                       headers=tenant.member()).status_code == 403


def test_agencies_cannot_see_or_touch_each_others_endpoints(app, client, db, make_tenant, receiver):
    a, b = make_tenant("A"), make_tenant("B")
    endpoint = _create(client, a, receiver.url).json
    _emit(app, db, a.agency_id)
    base = f"/api/v1/event-endpoints/{endpoint['id']}"
    assert client.get("/api/v1/event-endpoints", headers=b.admin()).json == {"event_endpoints": []}
    for method, path, body in [("get", base, None), ("patch", base, {"enabled": False}), ("delete", base, None),
                               ("post", f"{base}/rotate-secret", None), ("get", f"{base}/deliveries", None)]:
        response = getattr(client, method)(path, json=body, headers=b.admin())
        missing = getattr(client, method)(path.replace(endpoint["id"], str(uuid.uuid4())), json=body,
                                          headers=b.admin())
        assert response.status_code == missing.status_code == 404 and response.json == missing.json
    assert len(_deliveries(client, a, endpoint["id"])) == 1
    assert client.get(base, headers=a.admin()).json["enabled"] is True


# -- emitting and delivering ---------------------------------------------------------------------------

def test_a_delivery_is_signed_standard_webhooks_style(app, client, db, make_tenant, receiver):
    tenant = make_tenant()
    created = _create(client, tenant, receiver.url).json
    _emit(app, db, tenant.agency_id, "call.ended", {"call_id": "c-1", "when": utcnow(), "id": uuid.UUID(int=5)})
    assert Worker(app).run_once() == 1
    [(headers, body)] = receiver.requests
    assert verify_standard_webhook(created["secret"], headers, body)
    assert not verify_standard_webhook(created["secret"], headers, body + b" ")
    payload = json.loads(body)
    assert payload["type"] == "call.ended" and payload["id"] == headers["webhook-id"]
    assert payload["data"]["call_id"] == "c-1" and payload["data"]["id"] == str(uuid.UUID(int=5))
    assert headers["content-type"] == "application/json"
    [delivery] = _deliveries(client, tenant, created["id"])
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("delivered", 1, 200)
    assert delivery["payload"] == payload and delivery["event_id"] == payload["id"]
    assert delivery["next_attempt_at"] is None and delivery["delivered_at"] is not None


def test_failed_deliveries_are_retried_and_survive_a_restart(config, tmp_path, app, client, db, make_tenant,
                                                             receiver):
    tenant = make_tenant()
    created = _create(client, tenant, receiver.url).json
    receiver.statuses = [500, 503]
    _emit(app, db, tenant.agency_id)

    Worker(app).run_once()
    [delivery] = _deliveries(client, tenant, created["id"])
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("pending", 1, 500)
    assert delivery["last_error"] == "HTTP 500" and delivery["next_attempt_at"] is not None
    assert Worker(app).run_once() == 0  # backing off: not due yet

    for expected_attempts, expected_status in [(2, "pending"), (3, "delivered")]:
        # A "restart": a fresh app and worker find the retry in the database.
        _make_due(db)
        restarted = create_app(config, instance_path=str(tmp_path / f"restart-{expected_attempts}"))
        try:
            assert Worker(restarted).run_once() == 1
        finally:
            restarted.extensions["telephony.db"].dispose()
        [delivery] = _deliveries(client, tenant, created["id"])
        assert (delivery["attempts"], delivery["status"]) == (expected_attempts, expected_status)
    assert delivery["last_status_code"] == 200 and delivery["last_error"] is None
    assert len({headers["webhook-id"] for headers, _ in receiver.requests}) == 1  # the same message each time
    assert all(verify_standard_webhook(created["secret"], h, b) for h, b in receiver.requests)


def test_the_retry_schedule_backs_off_then_gives_up(app, client, db, make_tenant, receiver):
    tenant = make_tenant()
    created = _create(client, tenant, receiver.url).json
    receiver.statuses = [500] * 20
    _emit(app, db, tenant.agency_id)
    waits = []
    while Worker(app).run_once():
        [delivery] = _deliveries(client, tenant, created["id"])
        if delivery["next_attempt_at"]:
            with db.session() as session:
                row = session.scalar(select(EventDelivery))
                waits.append(round((row.next_attempt_at - row.last_attempt_at).total_seconds()))
        _make_due(db)
    assert waits == list(events.RETRY_DELAYS)
    [delivery] = _deliveries(client, tenant, created["id"])
    assert (delivery["status"], delivery["attempts"]) == ("failed", events.MAX_ATTEMPTS) == ("failed", 8)
    assert len(receiver.requests) == 8


def test_410_gone_stops_and_disables_the_endpoint(app, client, db, make_tenant, receiver):
    tenant = make_tenant()
    created = _create(client, tenant, receiver.url).json
    receiver.statuses = [410]
    _emit(app, db, tenant.agency_id)
    Worker(app).run_once()
    assert _deliveries(client, tenant, created["id"])[0]["status"] == "failed"
    endpoint = client.get(f"/api/v1/event-endpoints/{created['id']}", headers=tenant.admin()).json
    assert endpoint["enabled"] is False and "410" in endpoint["disabled_reason"]
    _emit(app, db, tenant.agency_id)  # nothing is queued for a disabled endpoint
    assert len(_deliveries(client, tenant, created["id"])) == 1
    enabled = client.patch(f"/api/v1/event-endpoints/{created['id']}", json={"enabled": True},
                           headers=tenant.admin()).json
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None


@pytest.mark.parametrize("case, error", [("timeout", "timed out"), ("redirect", "redirects are not followed"),
                                         ("refused", "connection failed")])
def test_timeouts_redirects_and_refusals_are_retried(app, client, db, make_tenant, receiver, monkeypatch,
                                                     case, error):
    if case == "timeout":
        # Only this case waits for the receiver to be too slow; the others keep the normal
        # timeout, so a busy machine cannot turn a redirect into a timeout.
        monkeypatch.setattr(events, "TIMEOUT", (1.0, 0.3))
    tenant = make_tenant()
    url = "http://127.0.0.1:9/closed" if case == "refused" else receiver.url
    created = _create(client, tenant, url).json
    receiver.statuses = [302] if case == "redirect" else []
    receiver.delay_s = 1.0 if case == "timeout" else 0.0
    _emit(app, db, tenant.agency_id)
    Worker(app).run_once()
    [delivery] = _deliveries(client, tenant, created["id"])
    assert delivery["status"] == "pending" and error in delivery["last_error"]
    assert len(receiver.requests) == (0 if case == "refused" else 1)  # the redirect was not followed


def test_rotation_signs_with_both_secrets_for_a_while(app, client, db, make_tenant, receiver):
    tenant = make_tenant()
    created = _create(client, tenant, receiver.url).json
    new = client.post(f"/api/v1/event-endpoints/{created['id']}/rotate-secret", headers=tenant.admin()).json
    _emit(app, db, tenant.agency_id)
    Worker(app).run_once()
    headers, body = receiver.requests[-1]
    assert len(headers["webhook-signature"].split()) == 2
    assert verify_standard_webhook(created["secret"], headers, body) and verify_standard_webhook(new["secret"],
                                                                                                 headers, body)
    with db.session() as session:  # the grace period ends
        session.execute(update(EventEndpoint).values(previous_secret_expires_at=utcnow() - timedelta(seconds=1)))
    _emit(app, db, tenant.agency_id)
    Worker(app).run_once()
    headers, body = receiver.requests[-1]
    assert verify_standard_webhook(new["secret"], headers, body)
    assert not verify_standard_webhook(created["secret"], headers, body)


def test_only_enabled_subscribed_endpoints_get_an_event(app, client, db, make_tenant):
    tenant, other = make_tenant(), make_tenant()
    wanted = _create(client, tenant, "http://127.0.0.1:9/a", ["call.ended"]).json
    _create(client, tenant, "http://127.0.0.1:9/b", ["call.started"])
    _create(client, tenant, "http://127.0.0.1:9/c", ["call.ended"], enabled=False)
    _create(client, other, "http://127.0.0.1:9/d", ["call.ended"])
    _emit(app, db, tenant.agency_id, "call.ended")
    with db.session() as session:
        rows = list(session.scalars(select(EventDelivery)))
    assert [str(row.endpoint_id) for row in rows] == [wanted["id"]]
    with pytest.raises(ValueError):
        _emit(app, db, tenant.agency_id, "call.exploded")


def test_the_outbox_commits_or_rolls_back_with_the_change(app, db, client, make_tenant):
    tenant = make_tenant()
    _create(client, tenant, "http://127.0.0.1:9/a")
    with app.app_context():
        session = db.sessionmaker()
        emit_event(session, tenant.agency_id, "call.ended", {})
        session.rollback()  # the state change failed: no event either
        session.close()
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(EventDelivery)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_disabled_or_deleted_endpoint_ends_its_queued_deliveries(app, client, db, make_tenant, receiver):
    tenant = make_tenant()
    disabled = _create(client, tenant, receiver.url).json
    deleted = _create(client, tenant, receiver.url).json
    _emit(app, db, tenant.agency_id)
    client.patch(f"/api/v1/event-endpoints/{disabled['id']}", json={"enabled": False}, headers=tenant.admin())
    client.delete(f"/api/v1/event-endpoints/{deleted['id']}", headers=tenant.admin())
    assert Worker(app).run_once() == 2
    assert receiver.requests == []
    [delivery] = _deliveries(client, tenant, disabled["id"])
    assert delivery["status"] == "failed" and delivery["last_error"] == "endpoint disabled"
    with db.session() as session:
        assert set(session.scalars(select(Job.status))) == {"done"}


def test_deliveries_list_is_newest_first_with_status_filter_and_limit(app, client, db, make_tenant, receiver):
    tenant = make_tenant()
    created = _create(client, tenant, receiver.url).json
    receiver.statuses = [500]
    for n in range(3):
        _emit(app, db, tenant.agency_id, "call.ended", {"n": n})
        Worker(app).run_once()
    listed = _deliveries(client, tenant, created["id"])
    assert [d["payload"]["data"]["n"] for d in listed] == [2, 1, 0]
    assert [d["payload"]["data"]["n"] for d in _deliveries(client, tenant, created["id"], status="pending")] == [0]
    assert len(_deliveries(client, tenant, created["id"], limit=1)) == 1
    bad = client.get(f"/api/v1/event-endpoints/{created['id']}/deliveries?status=lost", headers=tenant.admin())
    assert bad.status_code == 400


# -- call events from the lifecycle ----------------------------------------------------------------------

def test_call_events_are_emitted_once_with_one_terminal_event(app, client, db, make_tenant):
    tenant = make_tenant()
    _create(client, tenant, "http://127.0.0.1:9/a")
    call_id = add_call(db, tenant.agency_id)
    with app.app_context(), db.session() as session:
        call = get_call(db, call_id)
        call = session.merge(call)
        assert emit_call_event(session, call, "call.answered") is True
        assert emit_call_event(session, call, "call.answered") is False
        assert emit_call_event(session, call, "call.ended") is True
        assert emit_call_event(session, call, "call.failed") is False  # one terminal event per call
    with db.session() as session:
        assert list(session.scalars(select(EventDelivery.event_type).order_by(EventDelivery.created_at))) == [
            "call.answered", "call.ended"]


def test_ultravox_webhooks_become_agency_events(app, client, db, make_tenant):
    tenant = make_tenant()
    set_ultravox_credentials(app, db, tenant.agency_id)
    _create(client, tenant, "http://127.0.0.1:9/a")
    # A call we never stored (rebuilt from metadata) that was answered and ended.
    our_id, uv_id = uuid.uuid4(), str(uuid.uuid4())
    joined = utcnow() - timedelta(seconds=30)
    call = snapshot(uv_id, joined=joined, ended=joined + timedelta(seconds=20), end_reason="hangup",
                    metadata=our_metadata(our_id, tenant.agency_id))
    for event in ("call.ended", "call.billed", "call.joined", "call.ended"):
        assert post_webhook(client, event, call).status_code == 204
    # One that never got answered.
    unjoined_uv = str(uuid.uuid4())
    add_call(db, tenant.agency_id, ultravox_call_id=unjoined_uv)
    assert post_webhook(client, "call.ended", snapshot(unjoined_uv, ended=utcnow(), end_reason="unjoined"),
                        agency_id=tenant.agency_id).status_code == 204
    with db.session() as session:
        rows = list(session.scalars(select(EventDelivery).order_by(EventDelivery.created_at)))
    bodies = [json.loads(row.payload) for row in rows]
    assert [(b["type"], b["data"]["status"]) for b in bodies] == [
        ("call.started", "created"), ("call.answered", "in-progress"), ("call.ended", "completed"),
        ("call.failed", "failed")]
    assert bodies[2]["data"]["call_id"] == str(our_id) and bodies[2]["data"]["duration_seconds"] == 20
