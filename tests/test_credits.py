"""call.billed deducts the billed duration from the agency's credits, exactly once per call."""
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import delete

from telephony.models import Agency, ProcessedWebhookEvent, utcnow
from telephony.services.ultravox_events import parse_duration

from .lifecycle_support import add_call, get_call, post_webhook, set_ultravox_credentials, snapshot


@pytest.fixture
def tenant(app, db, make_tenant):
    tenant = make_tenant("Acme", credit_balance=600)
    set_ultravox_credentials(app, db, tenant.agency_id)
    return tenant


def _balance(db, agency_id) -> int:
    with db.session() as session:
        return session.get(Agency, agency_id).credit_balance


def _billed_call(db, tenant, billed: str):
    uv_id = str(uuid.uuid4())
    call_id = add_call(db, tenant.agency_id, ultravox_call_id=uv_id)
    joined = utcnow() - timedelta(minutes=2)
    return call_id, snapshot(uv_id, joined=joined, ended=joined + timedelta(seconds=42), end_reason="hangup",
                             billed=billed)


@pytest.mark.parametrize("value, seconds", [("42s", 42), ("42.5s", 43), ("42.000000001s", 43), ("0s", 0),
                                            ("0.2s", 1), ("3600s", 3600)])
def test_durations_round_up_to_whole_seconds(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [None, 42, "42", "s", "-1s", "NaNs", "Infinitys", "4 2s", "1" * 40 + "s"])
def test_unusable_durations(value):
    assert parse_duration(value) is None


def test_billed_twice_deducts_once(client, db, tenant):
    call_id, call = _billed_call(db, tenant, "42.5s")
    for _ in range(2):
        assert post_webhook(client, "call.billed", call, agency_id=tenant.agency_id).status_code == 204
    assert _balance(db, tenant.agency_id) == 600 - 43
    row = get_call(db, call_id)
    assert row.credits_charged_seconds == 43 and row.billed_duration_seconds == 43


def test_the_charge_holds_even_without_the_idempotency_ledger(client, db, tenant):
    """The conditional UPDATE on calls.credits_charged_seconds is the guarantee, not the ledger alone."""
    _, call = _billed_call(db, tenant, "100s")
    assert post_webhook(client, "call.billed", call, agency_id=tenant.agency_id).status_code == 204
    with db.session() as session:
        session.execute(delete(ProcessedWebhookEvent))
    assert post_webhook(client, "call.billed", call, agency_id=tenant.agency_id).status_code == 204
    assert _balance(db, tenant.agency_id) == 500


def test_call_ended_is_provisional_and_call_billed_final(client, db, tenant):
    call_id, ended = _billed_call(db, tenant, "40s")
    assert post_webhook(client, "call.ended", ended, agency_id=tenant.agency_id).status_code == 204
    assert get_call(db, call_id).billed_duration_seconds == 40
    assert _balance(db, tenant.agency_id) == 600  # call.ended does not charge
    billed = {**ended, "billedDuration": "45s"}
    assert post_webhook(client, "call.billed", billed, agency_id=tenant.agency_id).status_code == 204
    # A late redelivery of call.ended cannot overwrite the final figure.
    assert post_webhook(client, "call.ended", {**ended, "billedDuration": "1s"},
                        agency_id=tenant.agency_id).status_code == 204
    row = get_call(db, call_id)
    assert row.billed_duration_seconds == 45 and row.credits_charged_seconds == 45
    assert _balance(db, tenant.agency_id) == 555


def test_credits_may_go_below_zero_and_other_agencies_are_untouched(client, db, tenant, make_tenant):
    other = make_tenant("Other", credit_balance=600)
    _, call = _billed_call(db, tenant, "700s")
    assert post_webhook(client, "call.billed", call, agency_id=tenant.agency_id).status_code == 204
    assert _balance(db, tenant.agency_id) == -100
    assert _balance(db, other.agency_id) == 600


def test_billed_without_a_duration_charges_nothing(client, db, tenant):
    call_id, call = _billed_call(db, tenant, None)
    assert post_webhook(client, "call.billed", call, agency_id=tenant.agency_id).status_code == 204
    assert _balance(db, tenant.agency_id) == 600 and get_call(db, call_id).credits_charged_seconds is None


def test_concurrent_redeliveries_deduct_once(app, db, tenant):
    _, call = _billed_call(db, tenant, "60s")

    def deliver(_):
        return post_webhook(app.test_client(), "call.billed", call, agency_id=tenant.agency_id).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(deliver, range(6)))
    assert statuses == [204] * 6  # serialised, not refused, on SQLite as on PostgreSQL
    assert _balance(db, tenant.agency_id) == 540
