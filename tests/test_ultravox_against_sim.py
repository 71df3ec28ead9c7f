"""The Ultravox client against the local simulator: the same code path as production."""
import pytest
import requests

from telephony.sim import ultravox as ultravox_sim
from telephony.sim.common import serve_in_thread
from telephony.ultravox import UltravoxClient
from telephony.ultravox_errors import (
    UltravoxClientError,
    UltravoxNotFound,
    UltravoxRateLimited,
    UltravoxServerError,
    UltravoxTimeout,
)

AGENT = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def _failures(sim, *rules):
    requests.post(f"{sim.base_url}/_sim/failures", json={"failures": list(rules)}, timeout=5).raise_for_status()


def test_agent_call_lifecycle(ultravox_sim):
    client = UltravoxClient("Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT", base_url=ultravox_sim.base_url)
    call = client.create_agent_call(AGENT, {"medium": {"twilio": {}}, "recordingEnabled": True,
                                            "firstSpeakerSettings": {"agent": {}},
                                            "templateContext": {"caller": "+14155550100"},
                                            "metadata": {"telephony.call_id": "abc"}})
    assert call["joinUrl"].startswith(("wss://", "ws://"))
    assert call["metadata"] == {"telephony.call_id": "abc"}
    assert client.get_call(call["callId"])["callId"] == call["callId"]
    with pytest.raises(UltravoxNotFound):
        client.get_recording(call["callId"])  # not ended yet
    client.hang_up(call["callId"], "Goodbye")
    with pytest.raises(UltravoxClientError) as error:
        client.hang_up(call["callId"])  # 422: no longer active
    assert error.value.status == 422
    assert client.get_call(call["callId"])["endReason"] == "agent_hangup"
    assert len(client.list_messages(call["callId"], page_size=1)) >= 2  # several cursor pages
    recording = client.get_recording(call["callId"])
    assert recording.redirect_url and "/_sim/storage/" in recording.redirect_url
    storage = requests.get(recording.redirect_url, timeout=5)
    assert storage.status_code == 200 and storage.content[:4] == b"RIFF"


def test_injected_failures_map_to_typed_errors(ultravox_sim):
    client = UltravoxClient("Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT", base_url=ultravox_sim.base_url,
                            timeout=(1.0, 0.5))
    _failures(ultravox_sim, {"method": "POST", "path_prefix": "/api/agents", "mode": "rate_limit",
                             "retry_after": 7, "count": 1})
    with pytest.raises(UltravoxRateLimited) as limited:
        client.create_agent_call(AGENT, {"medium": {"webRtc": {}}})
    assert limited.value.retry_after == 7
    _failures(ultravox_sim, {"method": "POST", "path_prefix": "/api/agents", "mode": "error", "status": 500,
                             "count": 1})
    with pytest.raises(UltravoxServerError):
        client.create_agent_call(AGENT, {"medium": {"webRtc": {}}})
    _failures(ultravox_sim, {"method": "POST", "path_prefix": "/api/agents", "mode": "timeout", "delay_s": 2,
                             "count": 1})
    with pytest.raises(UltravoxTimeout):
        client.create_agent_call(AGENT, {"medium": {"webRtc": {}}})
    # After the injected failures the simulator answers normally again.
    assert client.create_agent_call(AGENT, {"medium": {"webRtc": {}}})["callId"]


def test_direct_recording_is_streamed():
    with serve_in_thread(ultravox_sim.create_app(recording_mode="direct")) as sim:
        client = UltravoxClient("Zk9Ht7Lm.wX7pN9fM3kLj6tRq2bGhA8yE5cZvD4sT", base_url=sim.base_url)
        call = client.create_agent_call(AGENT, {"medium": {"webRtc": {}}, "recordingEnabled": True})
        requests.post(f"{sim.base_url}/_sim/calls/{call['callId']}/end", json={"endReason": "hangup"}, timeout=5)
        recording = client.get_recording(call["callId"])
        assert recording.redirect_url is None and recording.content_type == "audio/wav"
        assert b"".join(recording.response.iter_content(1024))[:4] == b"RIFF"
        recording.response.close()
