"""Try an inbound call end to end, locally: `make try-inbound` (python -m bench.try_inbound).

Starts the Ultravox simulator and the service (gunicorn, SQLite in a temp dir), sets up a
demo agency whose Twilio number is answered by an agent, sends the signed webhook Twilio
sends when someone dials that number, prints the TwiML answer and what the simulator was
asked, then shuts everything down. Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import sys

import requests

from bench.common import (
    DEMO_CALLER,
    DEMO_NUMBER,
    PUBLIC_BASE_URL,
    VOICE_PATH,
    new_call_sid,
    running_stack,
    signed_twilio_webhook,
)


def main() -> int:
    with running_stack("sqlite") as stack:
        print(f"Ultravox simulator: {stack.ultravox_url}")
        print(f"service (gunicorn): {stack.service_url}  PUBLIC_BASE_URL={PUBLIC_BASE_URL}  database: SQLite")
        print(f"demo agency: Twilio number {DEMO_NUMBER} -> agent 'Receptionist'\n")
        call_sid = new_call_sid()
        body, headers = signed_twilio_webhook(call_sid)
        print(f"POST {VOICE_PATH}  (Twilio: CallSid={call_sid} From={DEMO_CALLER} To={DEMO_NUMBER}, "
              "X-Twilio-Signature over the public URL)")
        with requests.Session() as http:
            http.trust_env = False
            response = http.post(stack.service_url + VOICE_PATH, data=body, headers=headers, timeout=15)
            print(f"-> {response.status_code} {response.headers.get('Content-Type')}\n{response.text}\n")
            [call] = http.get(f"{stack.ultravox_url}/_sim/calls", timeout=5).json()["calls"]
            again = http.post(stack.service_url + VOICE_PATH, data=body, headers=headers, timeout=15)
            forged = http.post(stack.service_url + VOICE_PATH, data=body,
                               headers={**headers, "X-Twilio-Signature": "forged"}, timeout=15)
        print("the Ultravox call it created:")
        print(f"  medium={call['call']['medium']} firstSpeakerSettings={call['call']['firstSpeakerSettings']}")
        print(f"  templateContext={call['templateContext']}")
        print(f"  metadata={call['call']['metadata']}")
        print(f"\nthe same webhook again -> {again.status_code}, same answer: {again.text == response.text}")
        print(f"a forged signature -> {forged.status_code}")
        ok = response.status_code == 200 and "<Connect><Stream" in response.text and forged.status_code == 403
    print("\nstopped the service and the simulator; removed the temp dir")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
