"""A body over its route's limit is refused whole (413) however it is framed.

Werkzeug cut chunked bodies (no Content-Length) at the limit without an error: a
10,000-row CSV sent chunked added its first few thousand rows and dropped the rest
without a word. The same file with Content-Length was always 413.
"""
from __future__ import annotations

import io

from sqlalchemy import func, select

from telephony import create_app
from telephony.api.ultravox_webhooks import MAX_WEBHOOK_BODY_BYTES
from telephony.models import CampaignContact
from tests.outbound_helpers import create_campaign, seed_agency

CHUNKED = {"Transfer-Encoding": "chunked"}


def contacts_csv(rows: int) -> bytes:
    return ("phone,name\n" + "".join(f"+1415555{n:04d},Contact {n}\n" for n in range(rows))).encode()


def post_chunked(client, path: str, body: bytes, **headers: str):
    # As a WSGI server passes a chunked request on: no Content-Length, and the input
    # ends where the chunks end (the test client would otherwise count the bytes).
    return client.post(path, input_stream=io.BytesIO(body), headers={**CHUNKED, **headers},
                       environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})


def contact_count(app) -> int:
    with app.extensions["telephony.db"].session() as session:
        return session.scalar(select(func.count()).select_from(CampaignContact)) or 0


def test_a_chunked_csv_over_the_limit_is_refused_whole(config, tmp_path):
    # The contact route's own limit (CONTACT_IMPORT_MAX_BYTES, 25 MB by default), set
    # small here so that a 10,000-row file is over it.
    sim_app = create_app(config.with_overrides(contact_import_max_bytes=128 * 1024),
                         instance_path=str(tmp_path / "limited"))
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, [{"phone": "+12125550123"}])
    body = contacts_csv(10_000)
    assert len(body) > sim_app.extensions["telephony.config"].contact_import_max_bytes
    for send in (lambda: post_chunked(client, f"/api/v1/campaigns/{campaign['id']}/contacts", body,
                                      **{"Content-Type": "text/csv"}, **seeded.headers()),
                 lambda: client.post(f"/api/v1/campaigns/{campaign['id']}/contacts", data=body,
                                     content_type="text/csv", headers=seeded.headers())):
        response = send()
        assert response.status_code == 413
        assert response.json == {"error": "Request body too large", "code": "payload_too_large"}
        assert contact_count(sim_app) == 1  # the campaign's own contact; nothing of the file
    sim_app.extensions["telephony.db"].dispose()


def test_a_chunked_body_within_the_limit_is_read_whole(sim_app):
    seeded = seed_agency(sim_app)
    client = sim_app.test_client()
    campaign = create_campaign(client, seeded, [{"phone": "+12125550123"}])
    body = contacts_csv(500)
    response = post_chunked(client, f"/api/v1/campaigns/{campaign['id']}/contacts", body,
                            **{"Content-Type": "text/csv"}, **seeded.headers())
    assert response.status_code == 200, response.json
    assert response.json["added"] == 500 and contact_count(sim_app) == 501


def test_each_route_keeps_its_own_limit_when_chunked(client, make_tenant):
    # The Ultravox webhook route allows 1 MB: a chunked body of 200 KB reaches it (and is
    # refused there for its missing signature), one over 1 MB never does.
    within = b'{"event": "call.started", "call": {"callId": "x", "pad": "' + b"a" * 200_000 + b'"}}'
    assert post_chunked(client, "/webhooks/ultravox", within, **{"Content-Type": "application/json"}).status_code == 401
    over = b"a" * (MAX_WEBHOOK_BODY_BYTES + 1)
    assert post_chunked(client, "/webhooks/ultravox", over, **{"Content-Type": "application/json"}).status_code == 413
    # The API's 64 KB: a 200 KB chunked JSON body is 413, as with Content-Length.
    tenant = make_tenant()
    assert post_chunked(client, "/api/v1/agents", within, **{"Content-Type": "application/json"},
                        **tenant.admin()).status_code == 413
