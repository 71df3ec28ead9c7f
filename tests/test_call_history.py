"""GET /api/v1/calls and /api/v1/calls/{id}: filters, keyset pages, cursors, tenancy, scopes."""
import base64
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from werkzeug.exceptions import HTTPException

from telephony.models import CallDirection, CallSource

from .lifecycle_support import add_agent, add_call

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def history(db, make_tenant):
    """Agency A: 8 calls over 8 hours (two share a created_at), one agent on half. Agency B: 3 calls."""
    a, b = make_tenant("A"), make_tenant("B")
    agent = add_agent(db, a.agency_id)
    calls = []
    for n in range(8):
        created = BASE + timedelta(hours=n if n != 7 else 6)  # calls 6 and 7 tie on created_at
        calls.append(add_call(
            db, a.agency_id, created_at=created, agent_id=agent if n % 2 == 0 else None,
            direction=CallDirection.outbound if n < 3 else CallDirection.inbound,
            source=CallSource.twilio if n % 4 == 0 else CallSource.webrtc,
            status="completed" if n != 5 else "failed"))
    others = [add_call(db, b.agency_id, created_at=BASE + timedelta(hours=n)) for n in range(3)]
    return {"a": a, "b": b, "agent": agent, "calls": calls, "others": others}


def _pages(client, tenant, limit: int, **filters) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        params = {"limit": limit, **filters, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/calls", query_string=params, headers=tenant.member())
        assert response.status_code == 200, response.json
        pages.append(response.json["calls"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20


def test_several_pages_cover_every_call_once_newest_first(client, history):
    pages = _pages(client, history["a"], limit=3)
    assert [len(page) for page in pages] == [3, 3, 2]
    rows = [row for page in pages for row in page]
    assert {row["id"] for row in rows} == {str(c) for c in history["calls"]}  # no duplicates, none skipped
    keys = [(row["created_at"], row["id"]) for row in rows]
    assert keys == sorted(keys, reverse=True)


def test_the_last_page_ends_with_a_null_cursor(client, history):
    response = client.get("/api/v1/calls?limit=8", headers=history["a"].member())
    assert len(response.json["calls"]) == 8 and response.json["next_cursor"] is None
    assert client.get("/api/v1/calls", headers=history["a"].member()).json["next_cursor"] is None  # default 50


def test_filters(client, history):
    a, calls = history["a"], history["calls"]

    def ids(**filters) -> set[str]:
        return {row["id"] for page in _pages(client, a, limit=2, **filters) for row in page}

    assert ids(agent_id=str(history["agent"])) == {str(calls[n]) for n in (0, 2, 4, 6)}
    assert ids(direction="outbound") == {str(calls[n]) for n in (0, 1, 2)}
    assert ids(source="twilio") == {str(calls[n]) for n in (0, 4)}
    assert ids(status="failed") == {str(calls[5])}
    # Half-open range [from, to); naive times are UTC; a date alone is midnight.
    assert ids(created_from="2026-03-01T14:00:00", created_to="2026-03-01T16:00:00+00:00") == {
        str(calls[2]), str(calls[3])}
    assert ids(created_from="2026-03-02") == set()
    assert ids(direction="inbound", source="twilio") == {str(calls[4])}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "many"}, {"direction": "sideways"},
                                    {"status": "done"}, {"agent_id": "not-a-uuid"}, {"created_from": "soon"},
                                    {"colour": "blue"}])
def test_invalid_query_parameters_are_400(client, history, params):
    response = client.get("/api/v1/calls", query_string=params, headers=history["a"].member())
    assert response.status_code == 400 and response.json["code"] == "invalid_input"


def test_tampered_cursors_are_400(client, history):
    a = history["a"]
    cursor = client.get("/api/v1/calls?limit=3", headers=a.member()).json["next_cursor"]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    edited = base64.urlsafe_b64encode(raw.replace(b"2026", b"2027")).rstrip(b"=").decode()
    flipped = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
    for bad in (edited, flipped, "garbage!", "", "e30", cursor[:10]):
        response = client.get("/api/v1/calls", query_string={"limit": 3, "cursor": bad}, headers=a.member())
        if bad == "":
            assert response.status_code == 200  # an empty cursor is the first page
            continue
        assert response.status_code == 400 and response.json["fields"] == {
            "cursor": "cursor is not valid; start again without it"}
    # A cursor is bound to its filters.
    other = client.get("/api/v1/calls", query_string={"limit": 3, "cursor": cursor, "direction": "inbound"},
                       headers=a.member())
    assert other.status_code == 400 and "filters" in other.json["error"]


def test_agencies_see_only_their_own_calls(client, history):
    a, b = history["a"], history["b"]
    assert {row["id"] for row in client.get("/api/v1/calls", headers=b.member()).json["calls"]} == {
        str(c) for c in history["others"]}
    theirs = history["others"][0]
    # Another agency's call is a 404 exactly like a missing one.
    hidden = client.get(f"/api/v1/calls/{theirs}", headers=a.member())
    missing = client.get(f"/api/v1/calls/{uuid.uuid4()}", headers=a.member())
    assert hidden.status_code == missing.status_code == 404 and hidden.json == missing.json
    # B's cursor does not reveal B's calls to A either: the agency filter applies regardless.
    cursor = client.get("/api/v1/calls?limit=1", headers=b.member()).json["next_cursor"]
    leaked = client.get("/api/v1/calls", query_string={"limit": 1, "cursor": cursor}, headers=a.member())
    assert all(row["id"] not in {str(c) for c in history["others"]} for row in leaked.json["calls"])


def test_one_call_with_transcript_and_summary(client, db, make_tenant):
    tenant = make_tenant()
    transcript = [{"role": "MESSAGE_ROLE_AGENT", "text": "Hello"}, {"role": "MESSAGE_ROLE_USER", "text": "Hi"}]
    call_id = add_call(db, tenant.agency_id, transcript=transcript, summary="Said hello.", short_summary="Hello.",
                       has_recording=True, status="completed", end_reason="hangup", metadata_={"crm": "7"})
    detail = client.get(f"/api/v1/calls/{call_id}", headers=tenant.member())
    assert detail.status_code == 200
    body = detail.json
    assert body["transcript"] == transcript and body["summary"] == "Said hello."
    assert body["short_summary"] == "Hello." and body["has_recording"] is True and body["metadata"] == {"crm": "7"}
    assert (body["source"], body["direction"], body["status"]) == ("webrtc", "inbound", "completed")
    listed = client.get("/api/v1/calls", headers=tenant.member()).json["calls"][0]
    assert "transcript" not in listed and "summary" not in listed and listed["short_summary"] == "Hello."


def test_calls_read_scope_is_required(client, make_tenant):
    tenant = make_tenant()
    keys = {}
    for scope in ("calls:read", "calls:write"):
        created = client.post("/api/v1/api-keys", json={"name": scope, "scopes": [scope]}, headers=tenant.admin())
        keys[scope] = created.json["key"]
    assert client.get("/api/v1/calls", headers={"X-API-Key": keys["calls:read"]}).status_code == 200
    assert client.get("/api/v1/calls", headers={"X-API-Key": keys["calls:write"]}).status_code == 403
    assert client.get("/api/v1/calls").status_code == 401
    assert client.get(f"/api/v1/calls/{uuid.uuid4()}", headers={"X-API-Key": keys["calls:write"]}).status_code == 403


def test_the_calls_routes_leave_room_for_literal_subpaths(app):
    adapter = app.url_map.bind("localhost")
    endpoint, _ = adapter.match("/api/v1/calls/" + str(uuid.uuid4()), method="GET")
    assert endpoint == "calls.get_call"
    with pytest.raises(HTTPException):  # 404, or 405 next to POST /api/v1/calls/websocket
        adapter.match("/api/v1/calls/websocket", method="GET")
