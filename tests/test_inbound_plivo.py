"""Inbound Plivo calls: POST /webhooks/plivo/answer (the shared contract + Plivo specifics)."""
from __future__ import annotations

import responses
from plivo.utils import validate_v3_signature

from tests.inbound_helpers import (
    CALLER,
    JOIN_URL,
    NUMBER,
    PLIVO_TOKEN,
    PUBLIC_BASE,
    InboundContract,
    PlivoCase,
    UltravoxMock,
    calls,
    parse_answer,
    plivo_headers,
    seed,
)


class TestPlivoInbound(InboundContract):
    case = PlivoCase()
    expected_stream_xml = ('<Response>\n  <Stream bidirectional="true" contentType="audio/x-l16;rate=16000" '
                           f'keepCallAlive="true">{JOIN_URL}</Stream>\n</Response>\n')


def test_our_signing_recipe_matches_the_sdk():
    params = PlivoCase().inbound_form("8c5d4c1e-0000-4000-8000-000000000001")
    url = PUBLIC_BASE + "/webhooks/plivo/answer"
    headers = plivo_headers(url, params)
    assert validate_v3_signature("POST", url, headers["X-Plivo-Signature-V3-Nonce"], PLIVO_TOKEN,
                                 headers["X-Plivo-Signature-V3"], dict(params))


def test_numbers_without_plus_are_routed_and_stored_as_e164(app, client):
    seed(app, carrier="plivo")
    case = PlivoCase()
    form = case.inbound_form(case.call_id())
    assert form["To"] == NUMBER.lstrip("+") and form["From"] == CALLER.lstrip("+")
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        response = case.post(client, case.voice_path, form)
    assert parse_answer(response.get_data(as_text=True)) == ("stream", JOIN_URL)
    [call] = calls(app)
    assert (call.from_number, call.to_number) == (CALLER, NUMBER)


def test_main_account_signature_is_accepted(app, client):
    """A subaccount's webhook also carries X-Plivo-Signature-Ma-V3 (main account token)."""
    seed(app, carrier="plivo")
    case = PlivoCase()
    form = case.inbound_form(case.call_id())
    signed = plivo_headers(PUBLIC_BASE + case.voice_path, form)
    headers = {"X-Plivo-Signature-V3": "bm90LXRoaXMtb25l",  # not a signature made with our token
               "X-Plivo-Signature-V3-Nonce": signed["X-Plivo-Signature-V3-Nonce"],
               "X-Plivo-Signature-Ma-V3": signed["X-Plivo-Signature-V3"]}
    with responses.RequestsMock() as rsps:
        UltravoxMock().answer_with(rsps)
        response = case.post(client, case.voice_path, form, signed=False, headers=headers)
    assert response.status_code == 200
