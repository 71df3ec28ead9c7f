"""POST /webhooks/ultravox[/<agency_id>]: signatures, agency resolution, idempotency, ordering, repair."""
import hashlib
import hmac
import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from telephony.models import Call, Job, ProcessedWebhookEvent, utcnow
from telephony.services.ultravox_events import parse_timestamp

from .lifecycle_support import (
    UV_AGENT,
    WEBHOOK_SECRET,
    add_agent,
    add_call,
    call_by_ultravox_id,
    get_call,
    iso,
    our_metadata,
    post_webhook,
    set_ultravox_credentials,
    sign,
    snapshot,
)

ROTATED_SECRET = "uv-webhook-secret-NEW-9876543210fedcba"


@pytest.fixture
def tenant(app, db, make_tenant):
    tenant = make_tenant("Acme")
    set_ultravox_credentials(app, db, tenant.agency_id)
    return tenant


def _count(db, model) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def _joined_call(db, tenant):
    uv_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id)
    return call_id, snapshot(uv_id, joined=utcnow() - timedelta(seconds=5))


# -- signatures ---------------------------------------------------------------------------------

def test_a_valid_signature_updates_the_call(client, db, tenant):
    call_id, call = _joined_call(db, tenant)
    response = post_webhook(client, "call.joined", call, agency_id=tenant.agency_id)
    assert response.status_code == 204 and response.data == b""
    row = get_call(db, call_id)
    assert row.status == "in-progress" and row.joined_at is not None


def test_rotation_any_of_several_signatures_passes(client, db, tenant):
    call_id, call = _joined_call(db, tenant)
    body = json.dumps({"event": "call.joined", "call": call}).encode()
    timestamp = iso(utcnow())
    # Ultravox signs with [old, new]; we hold only the old one (and then only the new one).
    both = f"{sign(body, timestamp, WEBHOOK_SECRET)},{sign(body, timestamp, ROTATED_SECRET)}"
    assert post_webhook(client, None, call, agency_id=tenant.agency_id, body=body, timestamp=timestamp,
                        signature=both).status_code == 204
    assert get_call(db, call_id).status == "in-progress"


def test_rotation_with_only_the_new_secret_stored(app, client, db, tenant):
    set_ultravox_credentials(app, db, tenant.agency_id, webhook_secret=ROTATED_SECRET)
    call_id, call = _joined_call(db, tenant)
    body = json.dumps({"event": "call.joined", "call": call}).encode()
    timestamp = iso(utcnow())
    both = f"{sign(body, timestamp, WEBHOOK_SECRET)}, {sign(body, timestamp, ROTATED_SECRET)}"
    assert post_webhook(client, None, call, agency_id=tenant.agency_id, body=body, timestamp=timestamp,
                        signature=both).status_code == 204


@pytest.mark.parametrize("case", ["forged", "stale", "future", "unparseable", "missing_signature",
                                  "missing_timestamp", "reserialised", "timestamp_not_signed"])
def test_unverifiable_webhooks_are_401_and_write_nothing(client, db, tenant, case):
    call_id, call = _joined_call(db, tenant)
    body = json.dumps({"event": "call.joined", "call": call}).encode()
    now = utcnow()
    timestamp = iso(now)
    kwargs = {}
    if case == "forged":
        kwargs["secret"] = "not-the-agency-secret"
    elif case == "stale":
        kwargs["timestamp"] = iso(now - timedelta(minutes=6))
    elif case == "future":
        kwargs["timestamp"] = iso(now + timedelta(minutes=3))
    elif case == "unparseable":
        kwargs["timestamp"] = "yesterday at noon"
    elif case == "missing_signature":
        kwargs["signature"] = ""
    elif case == "missing_timestamp":
        kwargs["timestamp"] = ""
    elif case == "reserialised":
        # Signed over the bytes Ultravox sent, but the body arrives re-serialised (other spacing).
        kwargs["signature"] = sign(json.dumps({"event": "call.joined", "call": call}, indent=1).encode(), timestamp)
        kwargs["timestamp"] = timestamp
    elif case == "timestamp_not_signed":
        kwargs["signature"] = hmac_body_only(body)
        kwargs["timestamp"] = timestamp
    response = post_webhook(client, None, call, agency_id=tenant.agency_id, body=body, **kwargs)
    assert response.status_code == 401
    assert response.json == {"error": "Webhook signature could not be verified", "code": "unauthorized"}
    assert get_call(db, call_id).status == "created"
    assert _count(db, ProcessedWebhookEvent) == 0 and _count(db, Job) == 0


def hmac_body_only(body: bytes) -> str:
    return hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("value", ["2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05.123456+00:00",
                                   "2026-01-02T05:04:05.123456+02:00", "2026-01-02T03:04:05.123456"])
def test_timestamps_with_z_offset_or_naive_are_the_same_instant(value):
    assert iso(parse_timestamp(value)) == "2026-01-02T03:04:05.123456Z"


@pytest.mark.parametrize("render", [lambda t: iso(t).replace("Z", "+00:00"), lambda t: iso(t)[:-1]])
def test_offset_and_naive_timestamp_headers_are_accepted(client, db, tenant, render):
    _, call = _joined_call(db, tenant)
    assert post_webhook(client, "call.joined", call, agency_id=tenant.agency_id,
                        timestamp=render(utcnow())).status_code == 204


def test_an_agency_without_a_webhook_secret_cannot_be_verified(client, db, make_tenant):
    other = make_tenant("No secret")
    call_id = add_call(db, other.agency_id)
    call = snapshot(get_call(db, call_id).ultravox_call_id, joined=utcnow())
    assert post_webhook(client, "call.joined", call, agency_id=other.agency_id).status_code == 401
    assert post_webhook(client, "call.joined", call, agency_id=uuid.uuid4()).status_code == 401


# -- which agency --------------------------------------------------------------------------------

def test_agency_from_metadata_on_the_shared_url(app, client, db, tenant, make_tenant):
    other = make_tenant("Other")
    set_ultravox_credentials(app, db, other.agency_id, webhook_secret="other-agency-secret-000000")
    our_id = add_call(db, tenant.agency_id)
    uv_id = get_call(db, our_id).ultravox_call_id
    call = snapshot(uv_id, joined=utcnow(), metadata=our_metadata(our_id, tenant.agency_id))
    assert post_webhook(client, "call.joined", call).status_code == 204
    assert get_call(db, our_id).status == "in-progress"
    # The other agency's secret does not verify a call whose metadata names this agency.
    assert post_webhook(client, "call.ended", call, secret="other-agency-secret-000000").status_code == 401


def test_agency_from_our_row_then_from_the_agent_mapping(client, db, tenant):
    call_id, call = _joined_call(db, tenant)  # no metadata: found through our row
    assert post_webhook(client, "call.joined", call).status_code == 204
    assert get_call(db, call_id).status == "in-progress"

    add_agent(db, tenant.agency_id)  # an Ultravox-started call: only its agent names the agency
    uv_id = str(uuid.uuid4())
    started = snapshot(uv_id, agent_id=UV_AGENT, medium={"twilio": {}})
    assert post_webhook(client, "call.started", started).status_code == 204
    row = call_by_ultravox_id(db, uv_id)
    assert row.agency_id == tenant.agency_id and row.source.value == "twilio" and row.direction.value == "inbound"


def test_an_agent_mapped_by_two_agencies_does_not_identify_one(app, client, db, tenant, make_tenant):
    other = make_tenant("Other")
    set_ultravox_credentials(app, db, other.agency_id)  # even with the same secret
    add_agent(db, tenant.agency_id)
    add_agent(db, other.agency_id)
    uv_id = str(uuid.uuid4())
    assert post_webhook(client, "call.started", snapshot(uv_id, agent_id=UV_AGENT)).status_code == 401
    assert post_webhook(client, "call.started", snapshot(uv_id)).status_code == 401  # no clue at all
    assert call_by_ultravox_id(db, uv_id) is None


def test_mapping_another_agencys_agent_does_not_take_its_webhooks(app, client, db, tenant, make_tenant):
    """The agent id is public (it sits in a widget): a squatter that maps it, with a secret
    of its own, neither blocks nor receives the owner's webhooks on the shared URL."""
    squatter = make_tenant("Squatter")
    set_ultravox_credentials(app, db, squatter.agency_id, webhook_secret="squatter-secret-0123456789")
    add_agent(db, tenant.agency_id)
    add_agent(db, squatter.agency_id)
    uv_id = str(uuid.uuid4())
    assert post_webhook(client, "call.started", snapshot(uv_id, agent_id=UV_AGENT)).status_code == 204
    assert call_by_ultravox_id(db, uv_id).agency_id == tenant.agency_id
    # Signed by the squatter about a call of the owner's agent: a call of the squatter's
    # own (it pays for it); the owner's row is not touched.
    other_id = str(uuid.uuid4())
    assert post_webhook(client, "call.started", snapshot(other_id, agent_id=UV_AGENT),
                        secret="squatter-secret-0123456789").status_code == 204
    assert call_by_ultravox_id(db, other_id).agency_id == squatter.agency_id
    assert call_by_ultravox_id(db, uv_id).agency_id == tenant.agency_id


def test_an_agency_cannot_touch_another_agencys_call(app, client, db, tenant, make_tenant):
    """Agency B knows its own secret; signing a webhook about A's call with it changes nothing."""
    other = make_tenant("B")
    set_ultravox_credentials(app, db, other.agency_id, webhook_secret="b-secret-0123456789")
    call_id, call = _joined_call(db, tenant)
    assert post_webhook(client, "call.joined", call, agency_id=other.agency_id,
                        secret="b-secret-0123456789").status_code == 401
    # Nor through metadata naming A while B's URL and secret are used, nor by reusing A's call id.
    repaired = snapshot(str(uuid.uuid4()), joined=utcnow(), metadata=our_metadata(call_id, tenant.agency_id))
    assert post_webhook(client, "call.joined", repaired, agency_id=other.agency_id,
                        secret="b-secret-0123456789").status_code == 401
    hijack = snapshot(str(uuid.uuid4()), joined=utcnow(), metadata=our_metadata(call_id, other.agency_id))
    assert post_webhook(client, "call.joined", hijack, agency_id=other.agency_id,
                        secret="b-secret-0123456789").status_code == 401
    assert get_call(db, call_id).status == "created" and get_call(db, call_id).agency_id == tenant.agency_id


# -- idempotency and ordering ------------------------------------------------------------------------

def test_duplicates_are_harmless(client, db, tenant):
    uv_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id)
    joined = utcnow() - timedelta(seconds=40)
    ended = snapshot(uv_id, joined=joined, ended=joined + timedelta(seconds=30), end_reason="hangup",
                     billed="30s", summary="Booked.")
    for _ in range(3):  # redeliveries carry a fresh timestamp, hence a new signature
        assert post_webhook(client, "call.ended", ended, agency_id=tenant.agency_id).status_code == 204
    row = get_call(db, call_id)
    assert (row.status, row.end_reason, row.duration_seconds, row.summary) == ("completed", "hangup", 30, "Booked.")
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.kind == "call.enrich")) == 1


def test_reordered_events_end_in_the_same_state(client, db, tenant):
    uv_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id)
    joined = utcnow() - timedelta(seconds=40)
    ended = joined + timedelta(seconds=20)
    for event, call in [("call.billed", snapshot(uv_id, joined=joined, ended=ended, end_reason="hangup", billed="20s")),
                        ("call.ended", snapshot(uv_id, joined=joined, ended=ended, end_reason="hangup")),
                        ("call.joined", snapshot(uv_id, joined=joined)),
                        ("call.started", snapshot(uv_id))]:
        assert post_webhook(client, event, call, agency_id=tenant.agency_id).status_code == 204
    row = get_call(db, call_id)
    assert row.status == "completed" and row.joined_at == joined
    assert row.ended_at == ended and row.billed_duration_seconds == 20


def test_an_unjoined_call_fails_unless_a_carrier_already_ended_it(client, db, tenant):
    uv_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id, status="ringing")
    unjoined = snapshot(uv_id, ended=utcnow(), end_reason="unjoined")
    assert post_webhook(client, "call.ended", unjoined, agency_id=tenant.agency_id).status_code == 204
    assert (get_call(db, call_id).status, get_call(db, call_id).end_reason) == ("failed", "unjoined")

    busy_uv = str(uuid.uuid4())
    busy_id = add_call(db, tenant.agency_id, ultravox_call_id=busy_uv, status="busy")
    assert post_webhook(client, "call.ended", snapshot(busy_uv, ended=utcnow(), end_reason="unjoined"),
                        agency_id=tenant.agency_id).status_code == 204
    assert get_call(db, busy_id).status == "busy"


def test_events_without_an_event_field_and_unknown_events(client, db, tenant):
    call_id, call = _joined_call(db, tenant)
    assert post_webhook(client, None, call, agency_id=tenant.agency_id).status_code == 204  # 2024 payload shape
    assert get_call(db, call_id).status == "in-progress"
    assert post_webhook(client, "call.transferred", call, agency_id=tenant.agency_id).status_code == 204


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"event": "call.ended"}', b'{"call": {"callId": 5}}'])
def test_bodies_that_are_not_call_webhooks_are_400(client, tenant, body):
    response = post_webhook(client, None, {}, agency_id=tenant.agency_id, body=body)
    assert response.status_code == 400


def test_a_large_call_object_is_accepted(client, db, tenant):
    call_id, call = _joined_call(db, tenant)
    call["systemPrompt"] = "x" * 200_000  # beyond the app-wide 64 KB body limit
    assert post_webhook(client, "call.joined", call, agency_id=tenant.agency_id).status_code == 204


# -- rebuilding calls we never stored ------------------------------------------------------------------

def test_partial_success_is_repaired_from_metadata(client, db, tenant):
    agent_id = add_agent(db, tenant.agency_id)
    our_id, uv_id = uuid.uuid4(), str(uuid.uuid4())
    metadata = {**our_metadata(our_id, tenant.agency_id, agent_id, source="twilio", direction="outbound"),
                "crm_id": "42"}
    joined = utcnow() - timedelta(seconds=90)
    call = snapshot(uv_id, joined=joined, ended=joined + timedelta(seconds=61), end_reason="agent_hangup",
                    metadata=metadata, created=joined - timedelta(seconds=5))
    assert post_webhook(client, "call.ended", call).status_code == 204
    row = get_call(db, our_id)  # our own call id is kept as the row id
    assert row.ultravox_call_id == uv_id and row.agency_id == tenant.agency_id and row.agent_id == agent_id
    assert (row.source.value, row.direction.value, row.status) == ("twilio", "outbound", "completed")
    assert row.metadata_ == {"crm_id": "42"} and row.duration_seconds == 61
    assert row.created_at == joined - timedelta(seconds=5)


def test_a_repaired_inbound_call_keeps_its_carrier_id_and_numbers(client, db, tenant):
    """Inbound calls send the carrier call id and both numbers in the metadata
    (services/inbound.py) so that an insert lost after the Ultravox create is
    rebuilt complete."""
    agent_id = add_agent(db, tenant.agency_id)
    our_id, uv_id = uuid.uuid4(), str(uuid.uuid4())
    metadata = {**our_metadata(our_id, tenant.agency_id, agent_id, source="twilio", direction="inbound"),
                "telephony.carrier_call_id": "CA" + "7" * 32, "telephony.from": "+14155550100",
                "telephony.to": "+14155550111"}
    assert post_webhook(client, "call.started", snapshot(uv_id, metadata=metadata)).status_code == 204
    row = get_call(db, our_id)
    assert (row.carrier_call_id, row.from_number, row.to_number) == ("CA" + "7" * 32, "+14155550100",
                                                                    "+14155550111")
    assert (row.source.value, row.direction.value) == ("twilio", "inbound")


def test_an_ultravox_started_call_gets_sensible_defaults(client, db, tenant):
    uv_id = str(uuid.uuid4())
    assert post_webhook(client, "call.started", snapshot(uv_id), agency_id=tenant.agency_id).status_code == 204
    row = call_by_ultravox_id(db, uv_id)
    assert (row.source.value, row.direction.value, row.agent_id, row.status) == ("webrtc", "inbound", None, "created")
    outgoing = str(uuid.uuid4())
    assert post_webhook(client, "call.started", snapshot(outgoing, medium={"sip": {"outgoing": {"to": "x"}}}),
                        agency_id=tenant.agency_id).status_code == 204
    assert call_by_ultravox_id(db, outgoing).direction.value == "outbound"


def test_call_started_racing_our_own_insert_is_retried_later(client, db, tenant):
    our_id, uv_id = uuid.uuid4(), str(uuid.uuid4())
    fresh = snapshot(uv_id, metadata=our_metadata(our_id, tenant.agency_id), created=utcnow())
    response = post_webhook(client, "call.started", fresh, agency_id=tenant.agency_id)
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert get_call(db, our_id) is None and _count(db, ProcessedWebhookEvent) == 0
    # Our insert lands meanwhile; Ultravox's retry then finds the row.
    add_call(db, tenant.agency_id, id=our_id, ultravox_call_id=uv_id)
    assert post_webhook(client, "call.started", fresh, agency_id=tenant.agency_id).status_code == 204
    # Had the insert failed for good, the retry after the grace period rebuilds the row instead.
    lost_id, lost_uv = uuid.uuid4(), str(uuid.uuid4())
    old = snapshot(lost_uv, metadata=our_metadata(lost_id, tenant.agency_id), created=utcnow() - timedelta(minutes=2))
    assert post_webhook(client, "call.started", old, agency_id=tenant.agency_id).status_code == 204
    assert get_call(db, lost_id).ultravox_call_id == lost_uv


def test_a_row_stored_without_the_ultravox_id_is_adopted(client, db, tenant):
    our_id = add_call(db, tenant.agency_id, ultravox_call_id=None)
    uv_id = str(uuid.uuid4())
    call = snapshot(uv_id, joined=utcnow(), metadata=our_metadata(our_id, tenant.agency_id))
    assert post_webhook(client, "call.joined", call).status_code == 204
    row = get_call(db, our_id)
    assert row.ultravox_call_id == uv_id and row.status == "in-progress"
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Call)) == 1
