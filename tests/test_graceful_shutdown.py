"""SIGTERM to the web server answers every webhook it has accepted (graceful shutdown).

The service runs as in production: gunicorn with the real gunicorn.conf.py (2 worker
processes, here with 16 threads each so that most of the burst waits its turn), the
Ultravox simulator answering after 1 s. 120 signed Twilio webhooks connect and send their
request, then the gunicorn master gets SIGTERM: every one of them must be answered with
the stream TwiML, none reset. "Accepted" is every connection the kernel completed before
the workers closed the listening socket, including those still queued in its backlog
(the workers accept those before closing); a connection attempted after that is refused,
which a proxy or carrier retries.

Before the fix, 95 of 120 were reset here (and 95 with 2 x 128 threads, 115 with 1 x 16):
a stopping gthread worker stopped accepting at once and the queued connections were reset
when the socket closed.
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time

import requests

from bench.common import VOICE_PATH, new_call_sid, running_stack, signed_twilio_webhook

WEBHOOKS = 120
ULTRAVOX_LATENCY_MS = 1000


def test_sigterm_answers_every_accepted_webhook():
    with running_stack("sqlite", service_env={"GUNICORN_THREADS": "16"}) as stack:
        assert stack.web_pid is not None
        port = int(stack.service_url.rsplit(":", 1)[1])
        with requests.Session() as http_client:
            http_client.trust_env = False
            http_client.post(f"{stack.ultravox_url}/_sim/config", json={"latency_ms": ULTRAVOX_LATENCY_MS},
                             timeout=5).raise_for_status()
        outcomes: list[str] = ["not run"] * WEBHOOKS
        sent = threading.Barrier(WEBHOOKS + 1, timeout=20)

        def webhook(i: int) -> None:
            body, headers = signed_twilio_webhook(new_call_sid())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                try:
                    conn.connect()
                except OSError as exc:
                    outcomes[i] = f"not accepted: {exc!r}"
                    return
                try:
                    conn.request("POST", VOICE_PATH, body=body, headers=headers)
                except OSError as exc:
                    outcomes[i] = f"dropped while sending: {exc!r}"
                    return
                finally:
                    sent.wait()
                try:
                    response = conn.getresponse()
                    answer = response.read().decode()
                except (OSError, http.client.HTTPException) as exc:
                    outcomes[i] = f"dropped: {exc!r}"
                    return
                ok = response.status == 200 and "<Connect><Stream" in answer
                outcomes[i] = "answered" if ok else f"answered {response.status}: {answer[:200]}"
            finally:
                conn.close()

        threads = [threading.Thread(target=webhook, args=(i,), daemon=True) for i in range(WEBHOOKS)]
        for thread in threads:
            thread.start()
        sent.wait()  # every webhook connected and sent: in flight
        os.kill(stack.web_pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        for thread in threads:
            thread.join(timeout=35)
        assert not any(thread.is_alive() for thread in threads)

        dropped = [outcome for outcome in outcomes if outcome != "answered"]
        assert not dropped, f"{len(dropped)} of {WEBHOOKS} not answered, e.g. {dropped[:3]}"
        # The server exits once they are answered, and then refuses new connections.
        deadline = stopped_at + 25
        while _running(stack.web_pid):
            assert time.monotonic() < deadline, "gunicorn still running 25 s after SIGTERM"
            time.sleep(0.1)
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def _running(pid: int) -> bool:
    """Whether the process runs (an exited child not yet reaped is a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
