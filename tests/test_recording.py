"""GET /functions/v1/get-call-recording (seed 003) and the signed recording link.

Ultravox answers the recording endpoint with a 302 to a short-lived storage
URL, or with the audio itself (200). The first is passed on; the second
becomes a signed link to our own route, so our API key never leaves the
server and is never sent to the storage host."""
from __future__ import annotations

import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from sqlalchemy import text

from telephony.models import Call, CallDirection, CallSource
from telephony.signing import UrlSigner
from tests.conftest import JWT_SECRET
from tests.test_web_calls import ULTRAVOX_KEY, UV_AGENT, UV_BASE, mock_ultravox, setup_agency
from tests.ultravox_openapi import validate_request

GET = "/functions/v1/get-call-recording"
STORAGE_URL = ("https://storage.googleapis.com/fixie-ultravox-prod/call_recordings/2025/01/15/x.wav"
               "?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Expires=300&X-Goog-Signature=abc")
WAV = b"RIFF" + b"\x00" * 60



@pytest.fixture
def uv():
    yield from mock_ultravox()

def add_call(db, agency_id, *, has_recording: bool = True, ultravox_call_id: str | None = None) -> tuple[str, str]:
    """(our call id, Ultravox call id) of a stored call."""
    ultravox_call_id = ultravox_call_id or str(uuid.uuid4())
    with db.session() as session:
        call = Call(agency_id=agency_id, ultravox_call_id=ultravox_call_id, source=CallSource.twilio,
                    direction=CallDirection.inbound, has_recording=has_recording)
        session.add(call)
        session.flush()
        return str(call.id), ultravox_call_id


def mock_recording(uv, ultravox_call_id: str, *, status: int, headers: dict | None = None, body: bytes = b"",
                   content_type: str = "audio/wav"):
    def callback(request):
        validate_request(request)
        assert request.headers["X-API-Key"] == ULTRAVOX_KEY
        return status, headers or {}, body

    uv.rsps.add_callback(responses.GET, f"{UV_BASE}/api/calls/{ultravox_call_id}/recording", callback=callback,
                         content_type=content_type)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# -- success -----------------------------------------------------------------------------------

def test_302_gives_the_storage_url_without_following_it(client, db, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, uv_call_id = add_call(db, tenant.agency_id)
    mock_recording(uv, uv_call_id, status=302, headers={"Location": STORAGE_URL}, content_type="text/html")
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 200, response.json
    assert response.json == {"recording_url": STORAGE_URL}
    # Only the Ultravox API was asked (with the key); the storage host never saw a request from us,
    # `responses` would have refused one (it is not mocked).
    assert [c.request.url.split("?")[0] for c in uv.rsps.calls] == [
        f"{UV_BASE}/api/calls/{uv_call_id}/recording"]


def test_200_gives_a_signed_link_to_our_route_which_streams_the_audio(client, app, db, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, uv_call_id = add_call(db, tenant.agency_id)
    mock_recording(uv, uv_call_id, status=200, body=WAV)
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 200
    url = response.json["recording_url"]
    assert url.startswith(f"https://voice.example.test/recordings/{call_id}?")
    query = parse_qs(urlsplit(url).query)
    assert 0 < int(query["expires"][0]) - time.time() <= 300
    assert ULTRAVOX_KEY not in url

    audio = client.get(path_of(url))  # no credentials: the signature is the authorization
    assert audio.status_code == 200
    assert audio.data == WAV and audio.mimetype == "audio/wav"
    assert audio.headers["Cache-Control"] == "private, no-store"
    assert len(uv.rsps.calls) == 2  # once to learn it exists, once to stream it


def _signed_audio_url(client, db, make_tenant, uv, answers) -> tuple[str, list]:
    """A signed link to our streaming route; Ultravox then gives `answers(request)`
    (status, headers, body) for the audio. Returns the link and the requests Ultravox saw."""
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, uv_call_id = add_call(db, tenant.agency_id)
    mock_recording(uv, uv_call_id, status=200, body=WAV)
    url = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member()).json["recording_url"]
    uv.rsps.reset()
    seen: list = []

    def callback(request):
        validate_request(request)
        seen.append(request)
        return answers(request)

    uv.rsps.add_callback(responses.GET, f"{UV_BASE}/api/calls/{uv_call_id}/recording", callback=callback,
                         content_type="audio/wav")
    return path_of(url), seen


def _ranged(request):
    """Ultravox honouring one byte range of WAV, as its API and storage do."""
    start, end = request.headers["Range"].removeprefix("bytes=").split("-")
    end = min(int(end), len(WAV) - 1) if end else len(WAV) - 1
    if int(start) >= len(WAV):
        return 416, {"Content-Range": f"bytes */{len(WAV)}"}, b""
    part = WAV[int(start):end + 1]
    return 206, {"Content-Range": f"bytes {start}-{end}/{len(WAV)}", "Accept-Ranges": "bytes",
                 "Content-Length": str(len(part))}, part


def test_signed_link_passes_a_byte_range_on_for_seeking(client, db, make_tenant, uv):
    url, seen = _signed_audio_url(client, db, make_tenant, uv, _ranged)
    audio = client.get(url, headers={"Range": "bytes=4-11"})
    assert audio.status_code == 206
    assert audio.data == WAV[4:12]
    assert audio.headers["Content-Range"] == f"bytes 4-11/{len(WAV)}"
    assert audio.headers["Accept-Ranges"] == "bytes" and audio.headers["Content-Length"] == "8"
    assert audio.mimetype == "audio/wav" and audio.headers["Cache-Control"] == "private, no-store"
    assert seen[-1].headers["Range"] == "bytes=4-11" and seen[-1].headers["X-API-Key"] == ULTRAVOX_KEY

    outside = client.get(url, headers={"Range": f"bytes={len(WAV) + 10}-"})
    assert outside.status_code == 416 and outside.headers["Content-Range"] == f"bytes */{len(WAV)}"


@pytest.mark.parametrize("headers", [{"Range": "bytes=0-1,4-5"}, {"Range": "items=0-3"}, {"Range": "bytes=-"},
                                     {"Range": "bytes=0-3;x"}, {"Range": "bytes=" + "9" * 30 + "-"},
                                     {"Range": "bytes=0-3", "If-Range": '"some-etag"'}])
def test_a_range_ultravox_cannot_be_asked_for_as_is_gets_the_whole_recording(client, db, make_tenant, uv,
                                                                               headers):
    url, seen = _signed_audio_url(client, db, make_tenant, uv, lambda request: (200, {}, WAV))
    audio = client.get(url, headers=headers)
    assert audio.status_code == 200 and audio.data == WAV
    assert "Range" not in seen[-1].headers


def test_a_range_ultravox_ignores_gets_the_whole_recording(client, db, make_tenant, uv):
    url, seen = _signed_audio_url(client, db, make_tenant, uv, lambda request: (200, {}, WAV))
    audio = client.get(url, headers={"Range": "bytes=4-11"})
    assert seen[-1].headers["Range"] == "bytes=4-11"
    assert audio.status_code == 200 and audio.data == WAV and "Content-Range" not in audio.headers


def test_signed_link_redirects_when_ultravox_moved_to_storage(client, db, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, uv_call_id = add_call(db, tenant.agency_id)
    mock_recording(uv, uv_call_id, status=200, body=WAV)
    url = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member()).json["recording_url"]
    uv.rsps.reset()
    mock_recording(uv, uv_call_id, status=302, headers={"Location": STORAGE_URL})
    audio = client.get(path_of(url))
    assert audio.status_code == 302 and audio.headers["Location"] == STORAGE_URL


def test_signed_link_is_refused_when_tampered_expired_or_for_another_call(client, app, db, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, uv_call_id = add_call(db, tenant.agency_id)
    other_call_id, _ = add_call(db, tenant.agency_id)
    mock_recording(uv, uv_call_id, status=200, body=WAV)
    url = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member()).json["recording_url"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    signer = UrlSigner(app.extensions["telephony.config"].credentials_keys, "recording")
    expired_at, expired_signature = signer.sign(call_id, ttl_seconds=-1)
    foreign_purpose = UrlSigner(app.extensions["telephony.config"].credentials_keys, "other").sign(
        call_id, ttl_seconds=60)
    for path, params in [
        (f"/recordings/{call_id}", {**query, "signature": "0" * 64}),
        (f"/recordings/{call_id}", {**query, "signature": "é" * 64}),
        (f"/recordings/{call_id}", {**query, "expires": int(query["expires"]) + 1}),
        (f"/recordings/{other_call_id}", query),
        (f"/recordings/{call_id}", {"expires": expired_at, "signature": expired_signature}),
        (f"/recordings/{call_id}", {"expires": foreign_purpose[0], "signature": foreign_purpose[1]}),
    ]:
        response = client.get(path, query_string=params)
        assert response.status_code == 403, params
        assert response.json["code"] == "invalid_link"
    assert client.get(f"/recordings/{call_id}").status_code == 400
    assert client.get(f"/recordings/{call_id}", query_string={"expires": "soon", "signature": "x"}).status_code == 400
    assert client.get("/recordings/not-a-uuid", query_string=query).status_code == 404


def test_signed_links_survive_a_key_rotation(app):
    from cryptography.fernet import Fernet
    old = app.extensions["telephony.config"].credentials_keys
    expires, signature = UrlSigner(old, "recording").sign("abc", ttl_seconds=60)
    rotated = UrlSigner((Fernet.generate_key().decode(), *old), "recording")
    assert rotated.verify("abc", expires, signature)
    assert not UrlSigner((Fernet.generate_key().decode(),), "recording").verify("abc", expires, signature)


# -- errors, in the seed's order -------------------------------------------------------------

@pytest.mark.parametrize("query", [{}, {"call_id": ""}, {"call_id": "not-a-uuid"}, {"call_id": "1" * 5000}])
def test_400_call_id_missing_or_malformed(client, make_tenant, query):
    tenant = make_tenant()
    response = client.get(GET, query_string=query, headers=tenant.member())
    assert response.status_code == 400
    assert "call_id" in response.json["fields"]


def test_400_no_ultravox_key(client, db, make_tenant, uv):
    tenant = make_tenant()
    call_id, _ = add_call(db, tenant.agency_id)
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 400 and response.json["code"] == "ultravox_key_missing"


def test_401_and_403(client, db, make_tenant):
    from telephony.auth import mint_token
    from telephony.services.agencies import add_user
    tenant = make_tenant()
    call_id, _ = add_call(db, tenant.agency_id)
    assert client.get(GET, query_string={"call_id": call_id}).status_code == 401
    assert client.get(GET, query_string={"call_id": call_id},
                      headers={"Authorization": "Bearer nope"}).status_code == 401
    with db.session() as session:
        add_user(session, auth_subject="no-agency", agency_id=None)
    response = client.get(GET, query_string={"call_id": call_id},
                          headers={"Authorization": f"Bearer {mint_token(JWT_SECRET, 'no-agency')}"})
    assert response.status_code == 403


def test_404_missing_foreign_or_without_recording_look_the_same(client, db, make_tenant, uv):
    tenant, other = make_tenant(), make_tenant("Other")
    setup_agency(client, tenant)
    foreign, _ = add_call(db, other.agency_id)
    no_recording, _ = add_call(db, tenant.agency_id, has_recording=False)
    answers = [client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
               for call_id in (str(uuid.uuid4()), foreign, no_recording)]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert answers[0].json == answers[1].json == answers[2].json
    assert len(uv.rsps.calls) == 0


@pytest.mark.parametrize("status, body", [(404, b'{"detail": "Recording not enabled for this call."}'),
                                          (425, b'{"detail": "Too early"}'), (500, b"oops"),
                                          (204, b""), (302, b"")])
def test_404_when_ultravox_has_no_recording(client, db, make_tenant, uv, status, body):
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, uv_call_id = add_call(db, tenant.agency_id)
    mock_recording(uv, uv_call_id, status=status, body=body, content_type="application/json")  # 302: no Location
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 404
    assert response.json == {"error": "Recording not available", "code": "recording_unavailable"}


def test_404_when_ultravox_is_unreachable(client, db, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, uv_call_id = add_call(db, tenant.agency_id)
    uv.rsps.add(responses.GET, f"{UV_BASE}/api/calls/{uv_call_id}/recording", body=requests.ConnectTimeout())
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 404


def test_405(client, make_tenant):
    tenant = make_tenant()
    assert client.post(GET, json={}, headers=tenant.member()).status_code == 405
    assert client.delete(GET, headers=tenant.member()).status_code == 405


def test_500_credentials_cannot_be_read(client, db, make_tenant, uv):
    tenant = make_tenant()
    setup_agency(client, tenant)
    call_id, _ = add_call(db, tenant.agency_id)
    with db.session() as session:
        session.execute(text("UPDATE agency_credentials SET ciphertext = 'tampered'"))
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 500 and response.json["code"] == "credentials_unavailable"


def test_preflight(client):
    response = client.options(GET, headers={"Origin": "https://app.example.com",
                                            "Access-Control-Request-Method": "GET"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


# -- against the Ultravox simulator ------------------------------------------------------------

def _ended_sim_call(client, sim_app, ultravox_sim, tenant) -> tuple[str, str]:
    created = client.post("/functions/v1/calls-create", json={"agent_id": UV_AGENT}, headers=tenant.member())
    assert created.status_code == 201, created.json
    requests.post(f"{ultravox_sim.base_url}/_sim/calls/{created.json['ultravox_call_id']}/end", json={},
                  timeout=5).raise_for_status()
    with sim_app.extensions["telephony.db"].session() as session:  # as the call.ended webhook would
        session.get(Call, uuid.UUID(created.json["call_id"])).has_recording = True
    return created.json["call_id"], created.json["ultravox_call_id"]


def test_sim_redirect_mode(sim_app, ultravox_sim, make_tenant):
    client = sim_app.test_client()
    tenant = make_tenant()
    setup_agency(client, tenant, recording=True)
    call_id, _ = _ended_sim_call(client, sim_app, ultravox_sim, tenant)
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 200
    url = response.json["recording_url"]
    assert "/_sim/storage/" in url
    audio = requests.get(url, timeout=5)  # what the browser does, with no key
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    seek = requests.get(url, headers={"Range": "bytes=4-7"}, timeout=5)  # and, seeking, straight at the storage
    assert seek.status_code == 206 and seek.content == audio.content[4:8]
    storage = requests.get(f"{ultravox_sim.base_url}/_sim/storage-requests", timeout=5).json()["requests"]
    assert [r["had_api_key"] for r in storage] == [False, False]


def test_sim_direct_mode_streams_through_our_signed_link(sim_app, ultravox_sim, make_tenant):
    client = sim_app.test_client()
    tenant = make_tenant()
    setup_agency(client, tenant, recording=True)
    requests.post(f"{ultravox_sim.base_url}/_sim/config", json={"recording_mode": "direct"},
                  timeout=5).raise_for_status()
    call_id, _ = _ended_sim_call(client, sim_app, ultravox_sim, tenant)
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 200
    url = response.json["recording_url"]
    assert url.startswith("https://voice.example.test/recordings/")
    audio = client.get(path_of(url))
    assert audio.status_code == 200 and audio.data[:4] == b"RIFF" and audio.mimetype == "audio/wav"

    # Seeking: one byte range at a time, passed on to Ultravox.
    url, whole = path_of(url), audio
    assert whole.status_code == 200 and whole.headers["Content-Length"] == str(len(whole.data))
    part = client.get(url, headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.data == b"RIFF"
    assert part.headers["Content-Range"] == f"bytes 0-3/{len(whole.data)}"
    tail = client.get(url, headers={"Range": "bytes=-4"})
    assert tail.status_code == 206 and tail.data == whole.data[-4:]
    assert client.get(url, headers={"Range": f"bytes={len(whole.data)}-"}).status_code == 416


def test_sim_404_when_recording_disabled_or_call_not_ended(sim_app, ultravox_sim, make_tenant):
    client = sim_app.test_client()
    tenant = make_tenant()
    setup_agency(client, tenant, recording=False)
    call_id, _ = _ended_sim_call(client, sim_app, ultravox_sim, tenant)
    response = client.get(GET, query_string={"call_id": call_id}, headers=tenant.member())
    assert response.status_code == 404
    sim_requests = requests.get(f"{ultravox_sim.base_url}/_sim/requests", timeout=5).json()["requests"]
    assert sim_requests[-1]["path"].endswith("/recording") and sim_requests[-1]["had_api_key"]
    assert json.dumps(sim_requests).count(ULTRAVOX_KEY) == 0  # the sim's log never holds the key


def test_sim_every_other_row_of_the_seed_table(sim_app, ultravox_sim, make_tenant):
    """400, 401, 403, 404 (another agency's call), 405 and 500 on the simulator-backed app too."""
    from telephony.auth import mint_token
    from telephony.services.agencies import add_user
    client, db = sim_app.test_client(), sim_app.extensions["telephony.db"]
    tenant, other = make_tenant(), make_tenant("Other")
    setup_agency(client, tenant, recording=True)
    call_id, _ = _ended_sim_call(client, sim_app, ultravox_sim, tenant)
    with db.session() as session:
        add_user(session, auth_subject="sim-no-agency", agency_id=None)
    lonely = {"Authorization": f"Bearer {mint_token(JWT_SECRET, 'sim-no-agency')}"}
    query = {"call_id": call_id}
    assert client.get(GET, headers=tenant.member()).status_code == 400
    assert client.get(GET, query_string={"call_id": "nope"}, headers=tenant.member()).status_code == 400
    assert client.get(GET, query_string=query).status_code == 401
    assert client.get(GET, query_string=query, headers=lonely).status_code == 403
    assert client.get(GET, query_string=query, headers=other.member()).status_code == 404
    assert client.post(GET, query_string=query, headers=tenant.member()).status_code == 405
    with db.session() as session:
        session.execute(text("UPDATE agency_credentials SET ciphertext = 'tampered'"))
    assert client.get(GET, query_string=query, headers=tenant.member()).status_code == 500
    with db.session() as session:
        session.execute(text("DELETE FROM agency_credentials"))
    assert client.get(GET, query_string=query, headers=tenant.member()).status_code == 400  # no Ultravox key
