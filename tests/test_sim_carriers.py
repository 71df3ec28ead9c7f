"""Official carrier SDKs (via telephony.carriers.sdk) against the carriers simulator."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import plivo
import plivo.rest.client as plivo_client_module
import pytest
import requests
import telnyx
from plivo.exceptions import AuthenticationError as PlivoAuthenticationError
from plivo.exceptions import PlivoRestError, PlivoServerError
from twilio.base.exceptions import TwilioRestException

from telephony.carriers import sdk
from telephony.sim import carriers
from telephony.sim.common import ServerHandle, serve_in_thread

TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "twilio-token-for-sim-only"
TELNYX_KEY = "KEY0123456789SIMONLY"
PLIVO_ID = "MA" + "A1" * 9
PLIVO_TOKEN = "plivo-token-for-sim-only"
SECRETS = (TWILIO_TOKEN, TELNYX_KEY, PLIVO_TOKEN)
JOIN_URL = "wss://127.0.0.1:9100/calls/abc/join"
TWIML = f'<Response><Connect><Stream url="{JOIN_URL}"/></Connect></Response>'


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def _app() -> Any:
    return carriers.create_app(
        twilio_credentials={TWILIO_SID: TWILIO_TOKEN},
        telnyx_api_keys={TELNYX_KEY},
        plivo_credentials={PLIVO_ID: PLIVO_TOKEN},
    )


@pytest.fixture
def sim() -> Iterator[ServerHandle]:
    with serve_in_thread(_app()) as handle:
        yield handle


def _calls(http: requests.Session, sim: ServerHandle, carrier: str) -> list[dict[str, Any]]:
    return http.get(f"{sim.base_url}/_sim/calls", params={"carrier": carrier}).json()["calls"]


def _requests(http: requests.Session, sim: ServerHandle) -> list[dict[str, Any]]:
    return http.get(f"{sim.base_url}/_sim/requests").json()["requests"]


def _inject(http: requests.Session, sim: ServerHandle, **rule: Any) -> None:
    http.post(f"{sim.base_url}/_sim/failures", json={"failures": [rule]}).raise_for_status()


def _assert_no_secrets(http: requests.Session, sim: ServerHandle) -> None:
    dumped = json.dumps(_requests(http, sim)) + json.dumps(http.get(f"{sim.base_url}/_sim/calls").json())
    for secret in SECRETS:
        assert secret not in dumped


# -- happy paths --------------------------------------------------------------------------


def test_twilio_calls_create_and_update(http: requests.Session, sim: ServerHandle) -> None:
    client = sdk.twilio_client(TWILIO_SID, TWILIO_TOKEN, api_base=sim.base_url)
    call = client.calls.create(
        to="+15550001111",
        from_="+15550002222",
        twiml=TWIML,
        status_callback="http://127.0.0.1:8000/twilio/status",
        status_callback_event=["initiated", "completed"],
    )
    assert re.fullmatch(r"CA[0-9a-f]{32}", call.sid)
    assert call.status == "queued" and call.direction == "outbound-api"
    assert call.account_sid == TWILIO_SID and call.to == "+15550001111"
    assert isinstance(call.date_created, datetime)

    (placed,) = _calls(http, sim, "twilio")
    assert placed["id"] == call.sid
    assert placed["to"] == "+15550001111" and placed["from"] == "+15550002222"
    assert placed["twiml"] == TWIML
    assert placed["status_callback"] == "http://127.0.0.1:8000/twilio/status"
    assert placed["status_callback_event"] == ["initiated", "completed"]  # repeated form fields

    updated = client.calls(call.sid).update(status="completed")
    assert updated.status == "completed"
    assert _calls(http, sim, "twilio")[0]["status"] == "completed"
    log = _requests(http, sim)
    assert [r["method"] for r in log] == ["POST", "POST"] and all(r["had_auth"] for r in log)
    _assert_no_secrets(http, sim)


def test_telnyx_dial_answer_hangup(http: requests.Session, sim: ServerHandle) -> None:
    client = sdk.telnyx_client(TELNYX_KEY, api_base=f"{sim.base_url}/v2")
    result = client.calls.dial(
        connection_id="1234567890",
        from_="+15550002222",
        to="+15550001111",
        stream_url=JOIN_URL,
        stream_track="inbound_track",
        stream_bidirectional_mode="rtp",
        stream_bidirectional_codec="L16",
        webhook_url="http://127.0.0.1:8000/telnyx/events",
    )
    assert result.data is not None
    control_id = result.data.call_control_id
    assert control_id.startswith("v3:") and result.data.record_type == "call"

    (placed,) = _calls(http, sim, "telnyx")
    assert placed["id"] == control_id and placed["to"] == "+15550001111"
    assert placed["stream_url"] == JOIN_URL
    assert placed["stream_bidirectional_mode"] == "rtp"
    assert placed["webhook_url"] == "http://127.0.0.1:8000/telnyx/events"

    inbound_id = "v3:inbound-call-from-a-webhook"
    client.calls.actions.answer(inbound_id, stream_url=JOIN_URL, stream_bidirectional_mode="rtp")
    client.calls.actions.hangup(control_id)
    by_id = {c["id"]: c for c in _calls(http, sim, "telnyx")}
    assert by_id[inbound_id]["status"] == "answered"
    assert by_id[inbound_id]["updates"][0]["params"]["stream_url"] == JOIN_URL
    assert by_id[control_id]["status"] == "hangup"
    _assert_no_secrets(http, sim)


def test_plivo_calls_create_and_hangup(http: requests.Session, sim: ServerHandle) -> None:
    client = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN, api_base=sim.base_url)
    response = client.calls.create(
        from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/plivo/answer"
    )
    assert response.message == "call fired"
    request_uuid = response.request_uuid
    assert re.fullmatch(r"[0-9a-f-]{36}", request_uuid)

    (placed,) = _calls(http, sim, "plivo")
    assert placed["id"] == request_uuid and placed["to"] == "+15550001111"
    assert placed["answer_url"] == "http://127.0.0.1:8000/plivo/answer"

    client.calls.delete(request_uuid)
    assert _calls(http, sim, "plivo")[0]["status"] == "completed"
    assert [(r["method"], r["path"]) for r in _requests(http, sim)] == [
        ("POST", f"/v1/Account/{PLIVO_ID}/Call/"),
        ("DELETE", f"/v1/Account/{PLIVO_ID}/Call/{request_uuid}/"),
    ]
    _assert_no_secrets(http, sim)


# -- authentication -----------------------------------------------------------------------


def test_wrong_credentials_raise_each_sdks_auth_error(sim: ServerHandle) -> None:
    with pytest.raises(TwilioRestException) as twilio_error:
        sdk.twilio_client(TWILIO_SID, "wrong-token", api_base=sim.base_url).calls.create(
            to="+15550001111", from_="+15550002222", twiml=TWIML
        )
    assert twilio_error.value.status == 401 and twilio_error.value.code == 20003

    with pytest.raises(telnyx.AuthenticationError):
        sdk.telnyx_client("wrong-key", api_base=f"{sim.base_url}/v2").calls.dial(
            connection_id="1", from_="+15550002222", to="+15550001111"
        )

    with pytest.raises(PlivoAuthenticationError) as plivo_error:
        sdk.plivo_client(PLIVO_ID, "wrong-token", api_base=sim.base_url).calls.create(
            from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/a"
        )
    for error in (twilio_error.value, plivo_error.value):
        assert "wrong-token" not in str(error)


def test_factories_refuse_empty_credentials_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="auth_token"):
        sdk.twilio_client(TWILIO_SID, "")
    with pytest.raises(ValueError, match="api_key"):
        sdk.telnyx_client("  ")
    with pytest.raises(ValueError, match="auth_token") as error:
        sdk.plivo_client(PLIVO_ID, "")
    assert PLIVO_ID not in str(error.value)


# -- no automatic re-send -----------------------------------------------------------------


def test_injected_500_raises_and_each_sdk_sent_exactly_one_request(
    http: requests.Session, sim: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    twilio = sdk.twilio_client(TWILIO_SID, TWILIO_TOKEN, api_base=sim.base_url)
    _inject(http, sim, method="POST", path_prefix="/2010-04-01/", mode="error", status=500, count=1)
    with pytest.raises(TwilioRestException) as twilio_error:
        twilio.calls.create(to="+15550001111", from_="+15550002222", twiml=TWIML)
    assert twilio_error.value.status == 500

    client = sdk.telnyx_client(TELNYX_KEY, api_base=f"{sim.base_url}/v2")
    _inject(http, sim, method="POST", path_prefix="/v2/calls", mode="error", status=500, count=1)
    with pytest.raises(telnyx.InternalServerError):
        client.calls.dial(connection_id="1", from_="+15550002222", to="+15550001111", stream_url=JOIN_URL)

    plivo_sdk = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN, api_base=sim.base_url)
    _inject(http, sim, method="POST", path_prefix="/v1/Account/", mode="error", status=500, count=1)
    with pytest.raises(PlivoServerError):
        plivo_sdk.calls.create(from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/a")

    log = _requests(http, sim)
    assert [r["path"] for r in log] == [
        f"/2010-04-01/Accounts/{TWILIO_SID}/Calls.json",
        "/v2/calls",
        f"/v1/Account/{PLIVO_ID}/Call/",
    ]
    assert _calls(http, sim, "twilio") == _calls(http, sim, "telnyx") == _calls(http, sim, "plivo") == []
    assert "Fallback" not in capsys.readouterr().out  # plivo's retry loop prints this


def test_rate_limit_and_503_are_not_retried(http: requests.Session, sim: ServerHandle) -> None:
    client = sdk.telnyx_client(TELNYX_KEY, api_base=f"{sim.base_url}/v2")
    _inject(http, sim, path_prefix="/v2/calls", mode="rate_limit", retry_after=1, count=1)
    with pytest.raises(telnyx.RateLimitError):
        client.calls.dial(connection_id="1", from_="+15550002222", to="+15550001111")

    plivo_sdk = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN, api_base=sim.base_url)
    _inject(http, sim, path_prefix="/v1/Account/", mode="unavailable", retry_after=1, count=1)
    with pytest.raises(PlivoRestError):
        plivo_sdk.calls.create(from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/a")
    assert len(_requests(http, sim)) == 2


def test_read_timeout_is_not_retried(http: requests.Session, sim: ServerHandle) -> None:
    """A dial whose response never came may have placed the call: never re-send it."""
    client = sdk.telnyx_client(TELNYX_KEY, api_base=f"{sim.base_url}/v2", timeout=0.3)
    _inject(http, sim, path_prefix="/v2/calls", mode="timeout", delay_s=5, count=1)
    with pytest.raises(telnyx.APITimeoutError):
        client.calls.dial(connection_id="1", from_="+15550002222", to="+15550001111")

    plivo_sdk = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN, api_base=sim.base_url, timeout=0.3)
    _inject(http, sim, path_prefix="/v1/Account/", mode="timeout", delay_s=5, count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        plivo_sdk.calls.create(from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/a")

    twilio = sdk.twilio_client(TWILIO_SID, TWILIO_TOKEN, api_base=sim.base_url, timeout=0.3)
    _inject(http, sim, path_prefix="/2010-04-01/", mode="timeout", delay_s=5, count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        twilio.calls.create(to="+15550001111", from_="+15550002222", twiml=TWIML)
    assert len(_requests(http, sim)) == 3


def test_unpatched_sdks_would_resend_so_the_counts_above_are_meaningful(
    http: requests.Session, sim: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Canary: the stock SDKs really re-send a failed POST. If an SDK upgrade changes
    that, this fails and the factories' workarounds should be re-checked."""
    stock_telnyx = telnyx.Telnyx(api_key=TELNYX_KEY, base_url=f"{sim.base_url}/v2")
    _inject(http, sim, path_prefix="/v2/calls", mode="error", status=500, count=None)
    with pytest.raises(telnyx.InternalServerError):
        stock_telnyx.calls.dial(connection_id="1", from_="+15550002222", to="+15550001111")
    assert len(_requests(http, sim)) == 3
    http.post(f"{sim.base_url}/_sim/reset").raise_for_status()

    # Stock plivo can only be redirected by patching its module globals (test-local).
    local = f"{sim.base_url}/v1/Account"
    for name in ("API_VOICE_BASE_URI", "API_VOICE_BASE_URI_FALLBACK_1", "API_VOICE_BASE_URI_FALLBACK_2"):
        monkeypatch.setattr(plivo_client_module, name, local)
    stock_plivo = plivo.RestClient(PLIVO_ID, PLIVO_TOKEN)
    _inject(http, sim, path_prefix="/v1/Account/", mode="error", status=500, count=None)
    with pytest.raises(PlivoServerError):
        stock_plivo.calls.create(from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/a")
    assert len(_requests(http, sim)) == 3


# -- Telnyx command_id ---------------------------------------------------------------------


def test_telnyx_command_id_dedupes_dials(http: requests.Session, sim: ServerHandle) -> None:
    client = sdk.telnyx_client(TELNYX_KEY, api_base=f"{sim.base_url}/v2")
    dial = {"connection_id": "1", "from_": "+15550002222", "to": "+15550001111", "stream_url": JOIN_URL}
    first = client.calls.dial(command_id="dial-1", **dial)
    again = client.calls.dial(command_id="dial-1", **dial)
    other = client.calls.dial(command_id="dial-2", **dial)
    assert first.data and again.data and other.data
    assert again.data.call_control_id == first.data.call_control_id
    assert other.data.call_control_id != first.data.call_control_id
    assert len(_calls(http, sim, "telnyx")) == 2
    assert len(_requests(http, sim)) == 3  # the duplicate was received, and ignored


# -- base URLs ----------------------------------------------------------------------------


def test_default_api_bases_are_the_real_hosts() -> None:
    twilio = sdk.twilio_client(TWILIO_SID, TWILIO_TOKEN)
    assert twilio.api.base_url == "https://api.twilio.com"
    client = sdk.telnyx_client(TELNYX_KEY)
    assert str(client.base_url).rstrip("/") == "https://api.telnyx.com/v2"
    assert client.max_retries == 0
    plivo_sdk = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN)
    assert plivo_sdk.base_uri == "https://api.plivo.com/v1/Account"


def test_plivo_clients_keep_their_own_base_without_touching_globals(http: requests.Session) -> None:
    before = (plivo_client_module.PLIVO_API_BASE_URI, plivo_client_module.API_VOICE_BASE_URI)
    with serve_in_thread(_app()) as sim_a, serve_in_thread(_app()) as sim_b:
        client_a = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN, api_base=sim_a.base_url)
        client_b = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN, api_base=sim_b.base_url)
        for client in (client_a, client_b, client_a):
            client.calls.create(from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/a")
        assert len(_calls(http, sim_a, "plivo")) == 2
        assert len(_calls(http, sim_b, "plivo")) == 1
    assert (plivo_client_module.PLIVO_API_BASE_URI, plivo_client_module.API_VOICE_BASE_URI) == before
    assert plivo_client_module.API_VOICE_BASE_URI == "https://api.plivo.com/v1/Account"


def test_twilio_validation_error_shape(sim: ServerHandle) -> None:
    client = sdk.twilio_client(TWILIO_SID, TWILIO_TOKEN, api_base=sim.base_url)
    with pytest.raises(TwilioRestException) as error:
        client.calls.create(to="+15550001111", from_="+15550002222")  # no url/twiml
    assert error.value.status == 400 and error.value.code == 21205


def test_carriers_latency_injection(http: requests.Session) -> None:
    with serve_in_thread(carriers.create_app(latency_ms=200)) as sim:
        client = sdk.plivo_client(PLIVO_ID, PLIVO_TOKEN, api_base=sim.base_url)
        started = time.monotonic()
        client.calls.create(from_="+15550002222", to_="+15550001111", answer_url="http://127.0.0.1:8000/a")
        assert time.monotonic() - started >= 0.2
