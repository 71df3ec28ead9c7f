"""Inbound Twilio calls: POST /webhooks/twilio/voice (the shared contract + Twilio specifics)."""
from __future__ import annotations

import responses
from twilio.request_validator import RequestValidator

from tests.inbound_helpers import (
    JOIN_URL,
    PUBLIC_BASE,
    TWILIO_TOKEN,
    InboundContract,
    TwilioCase,
    UltravoxMock,
    parse_answer,
    seed,
    twilio_signature,
)


class TestTwilioInbound(InboundContract):
    case = TwilioCase()
    expected_stream_xml = ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                           f'<Stream url="{JOIN_URL}" /></Connect></Response>')


def test_our_signing_recipe_matches_the_sdk():
    params = TwilioCase().inbound_form("CA" + "0" * 32)
    url = PUBLIC_BASE + "/webhooks/twilio/voice"
    assert twilio_signature(url, params) == RequestValidator(TWILIO_TOKEN).compute_signature(url, params)


def test_signature_over_the_url_with_the_default_port_is_accepted(app, client):
    """Twilio sometimes signs https://host:443/...; the SDK accepts both forms."""
    seed(app, carrier="twilio")
    case = TwilioCase()
    form = case.inbound_form(case.call_id())
    signature = twilio_signature("https://voice.example.test:443/webhooks/twilio/voice", form)
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        response = case.post(client, case.voice_path, form, signed=False, headers={"X-Twilio-Signature": signature})
    assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)


def test_query_string_is_part_of_the_signed_url(app, client):
    seed(app, carrier="twilio")
    case = TwilioCase()
    form = case.inbound_form(case.call_id())
    path = "/webhooks/twilio/voice?tenant=acme"
    signature = twilio_signature(PUBLIC_BASE + path, form)
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        ok = case.post(client, path, form, signed=False, headers={"X-Twilio-Signature": signature})
    assert ok.status_code == 200
    # The same signature does not cover the URL without the query.
    refused = case.post(client, case.voice_path, form, signed=False, headers={"X-Twilio-Signature": signature})
    assert refused.status_code == 403
