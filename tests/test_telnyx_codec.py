"""TELNYX_STREAM_CODEC: the codec of Telnyx media streams, one value for both directions
(Ultravox: codec and bidirectionalCodec "must have the same value"), with the sampling
rate that goes with it. Only the combinations Ultravox documents are accepted."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import responses

from telephony import create_app
from telephony.config import Config, ConfigError
from tests.inbound_helpers import JOIN_URL, NUMBER, TelnyxTexmlCase, UltravoxMock, parse_answer, seed
from tests.test_inbound_telnyx import _call_control_id, _commands, _event, _post

# -- configuration ---------------------------------------------------------------------------


def test_default_is_l16_at_16_khz(tmp_path):
    config = Config.from_env({}, instance_path=tmp_path)
    assert (config.telnyx_stream_codec, config.telnyx_stream_sampling_rate) == ("L16", 16000)


@pytest.mark.parametrize("raw, codec, rate", [
    ("L16", "L16", 16000), ("PCMU", "PCMU", 8000), ("PCMA", "PCMA", 8000), (" pcmu ", "PCMU", 8000),
])
def test_documented_codecs_are_accepted(tmp_path, raw, codec, rate):
    config = Config.from_env({"TELNYX_STREAM_CODEC": raw}, instance_path=tmp_path)
    assert (config.telnyx_stream_codec, config.telnyx_stream_sampling_rate) == (codec, rate)


@pytest.mark.parametrize("raw", ["G722", "OPUS", "AMR-WB", "default", "L16/8000", "mulaw"])
def test_other_codecs_are_refused_naming_the_variable(tmp_path, raw):
    with pytest.raises(ConfigError) as error:
        Config.from_env({"TELNYX_STREAM_CODEC": raw}, instance_path=tmp_path)
    assert error.value.variable == "TELNYX_STREAM_CODEC"
    assert str(error.value).startswith("TELNYX_STREAM_CODEC:") and "L16, PCMU, PCMA" in str(error.value)


def test_a_config_built_in_code_is_checked_too(config):
    with pytest.raises(ConfigError, match="^TELNYX_STREAM_CODEC:"):
        config.with_overrides(telnyx_stream_codec="G722")


def test_create_app_fails_at_start_up_on_a_bad_codec(monkeypatch, tmp_path):
    monkeypatch.setenv("TELNYX_STREAM_CODEC", "OPUS")
    with pytest.raises(ConfigError, match="^TELNYX_STREAM_CODEC:"):
        create_app(instance_path=str(tmp_path))


# -- TeXML answer ------------------------------------------------------------------------------


def _texml_stream(app, number: str = NUMBER) -> dict[str, str]:
    seed(app, carrier="telnyx", number=number)
    case = TelnyxTexmlCase()
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        response = case.post(app.test_client(), case.voice_path, case.inbound_form(case.call_id(), to=number))
    xml = response.get_data(as_text=True)
    assert response.status_code == 200 and parse_answer(xml) == ("stream", JOIN_URL)
    return ET.fromstring(xml).find("./Connect/Stream").attrib


@pytest.mark.parametrize("codec, rate", [("PCMU", "8000"), ("PCMA", "8000"), ("L16", "16000")])
def test_texml_answer_uses_the_configured_codec_for_both_directions(config, tmp_path, codec, rate):
    app = create_app(config.with_overrides(telnyx_stream_codec=codec), instance_path=str(tmp_path / "instance"))
    try:
        stream = _texml_stream(app)
    finally:
        app.extensions["telephony.db"].dispose()
    assert stream == {"url": JOIN_URL, "bidirectionalMode": "rtp", "codec": codec, "bidirectionalCodec": codec,
                      "bidirectionalSamplingRate": rate}


def test_each_app_answers_with_its_own_codec(app, config, tmp_path):
    """Each app has its own carrier adapters, built from its own config: the codec comes
    from the app that handles the request, not from whichever app was created last."""
    other = create_app(config.with_overrides(telnyx_stream_codec="PCMA"), instance_path=str(tmp_path / "other"))
    try:
        assert _texml_stream(app)["codec"] == "L16"  # the `app` fixture: the default
        assert _texml_stream(other, "+14155550102")["codec"] == "PCMA"  # same database: another number
    finally:
        other.extensions["telephony.db"].dispose()


# -- Call Control answer ----------------------------------------------------------------------


def test_call_control_answer_uses_the_configured_codec_for_both_directions(sim_app, ultravox_sim, carrier_sim,
                                                                          tmp_path):
    # The codec is read from the config once, when create_app builds the app's carriers.
    app = create_app(sim_app.extensions["telephony.config"].with_overrides(telnyx_stream_codec="PCMU"),
                     instance_path=str(tmp_path / "pcmu"))
    try:
        seed(app, carrier="telnyx")
        ccid = _call_control_id()
        assert _post(app.test_client(), _event("call.initiated", ccid)).status_code == 200
    finally:
        app.extensions["telephony.db"].dispose()
    [answer] = _commands(carrier_sim, ccid)
    params = answer["params"]
    assert answer["action"] == "answer"
    assert (params["stream_bidirectional_mode"], params["stream_codec"], params["stream_bidirectional_codec"],
            params["stream_bidirectional_sampling_rate"]) == ("rtp", "PCMU", "PCMU", 8000)
