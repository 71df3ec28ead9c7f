"""Do-not-call: a number added after upload is never dialled."""
from __future__ import annotations

from tests.outbound_helpers import CALLEE, contacts_by_phone, create_campaign, dispatch_once, seed_agency, sim_calls


def test_number_added_after_upload_is_never_dialled(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, [{"phone": CALLEE}, {"phone": "+14155550124"}])
    added = client.post("/api/v1/do-not-call", json={"phones": [CALLEE], "reason": "asked"}, headers=seeded.headers())
    assert added.json == {"added": [CALLEE], "already_listed": []}
    assert dispatch_once(sim_app) == ["placed"]
    assert [c["to"] for c in sim_calls(carrier_sim)] == ["+14155550124"]
    assert contacts_by_phone(sim_app, campaign["id"])[CALLEE].state == "suppressed"
    assert client.get("/api/v1/do-not-call", headers=seeded.headers()).json["entries"][0]["phone"] == CALLEE
    assert client.delete(f"/api/v1/do-not-call/{CALLEE}", headers=seeded.headers()).status_code == 204


def test_upload_filters_listed_numbers(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    client.post("/api/v1/do-not-call", json={"phones": [CALLEE]}, headers=seeded.headers())
    campaign = create_campaign(client, seeded, [{"phone": CALLEE}])
    assert campaign["import_report"]["added"] == 0 and campaign["import_report"]["suppressed"][0]["phone"] == CALLEE
