"""Campaign API: CSV contacts, pause/resume/cancel, agency isolation."""
from __future__ import annotations

from tests.outbound_helpers import CALLEE, create_campaign, dispatch_once, seed_agency, sim_calls


def test_csv_upload_reports_lines(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, [], start=False)
    csv = "phone,name\n+14155550123,Ann\nnot-a-number,Bob\n+14155550123,Dup\n"
    response = client.post(f"/api/v1/campaigns/{campaign['id']}/contacts", data=csv,
                           headers=seeded.headers(**{"Content-Type": "text/csv"}))
    assert response.status_code == 200, response.json
    assert response.json["added"] == 1 and response.json["errors"][0]["line"] == 3
    assert response.json["duplicates"][0]["line"] == 4


def test_pause_resume_cancel(sim_app, carrier_sim):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, [{"phone": CALLEE}, {"phone": "+14155550124"}])
    url = f"/api/v1/campaigns/{campaign['id']}"
    assert client.post(f"{url}/pause", headers=seeded.headers()).json["status"] == "paused"
    assert dispatch_once(sim_app) == []
    assert client.post(f"{url}/pause", headers=seeded.headers()).status_code == 409
    assert client.post(f"{url}/resume", headers=seeded.headers()).json["status"] == "running"
    assert client.post(f"{url}/cancel", headers=seeded.headers()).json["status"] == "cancelled"
    assert dispatch_once(sim_app) == [] and sim_calls(carrier_sim) == []
    assert client.get(url, headers=seeded.headers()).json["progress"]["contacts"]["cancelled"] == 2


def test_agency_isolation(sim_app, carrier_sim):
    a = seed_agency(sim_app, name="A")
    b = seed_agency(sim_app, name="B", number="+14155550177")
    client = sim_app.test_client()
    campaign = create_campaign(client, a, [{"phone": CALLEE}], start=False)
    url = f"/api/v1/campaigns/{campaign['id']}"
    assert client.get(url, headers=b.headers()).status_code == 404
    assert client.get(f"{url}/contacts", headers=b.headers()).status_code == 404
    assert client.post(f"{url}/resume", headers=b.headers()).status_code == 404
    assert client.post(f"{url}/contacts", json={"contacts": [{"phone": "+14155550125"}]},
                       headers=b.headers()).status_code == 404
    assert client.get("/api/v1/campaigns", headers=b.headers()).json["campaigns"] == []
    client.post("/api/v1/do-not-call", json={"phones": [CALLEE]}, headers=a.headers())
    assert client.get("/api/v1/do-not-call", headers=b.headers()).json["entries"] == []
    assert client.delete(f"/api/v1/do-not-call/{CALLEE}", headers=b.headers()).status_code == 404
