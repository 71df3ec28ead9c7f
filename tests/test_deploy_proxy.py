"""The production front (deploy/nginx.conf) keeps slow clients away from gunicorn's threads.

gunicorn with the real gunicorn.conf.py, made small (1 process x 8 threads) so that
starvation shows at once, the Ultravox simulator, a SQLite database with one Twilio
number; nginx with deploy/nginx.conf, only its ADAPT lines rendered for loopback ports
and a temp dir. 200 clients connect and send half a request header, then hold.

- Through nginx: a real signed Twilio webhook is answered with the stream TwiML within
  WEBHOOK_BUDGET_S, the 200 slow connections still open (nginx holds them, gunicorn never
  sees them).
- Straight at gunicorn: the same 200 slow connections take every thread (each blocks
  reading a header that never ends) and the same webhook gets no answer within the
  budget: why the front is needed.

Needs nginx: skipped when it is not installed, unless REQUIRE_NGINX=1 (CI), which makes a
missing nginx a failure.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from bench.common import (
    ROOT,
    VOICE_PATH,
    Proc,
    free_port,
    new_call_sid,
    running_stack,
    signed_twilio_webhook,
    start,
    wait_ready,
)

SLOW_CLIENTS = 200
WEBHOOK_BUDGET_S = 5.0
CONFIG = ROOT / "deploy" / "nginx.conf"


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("REQUIRE_NGINX=1 but nginx is not installed")
        pytest.skip("nginx is not installed (CI installs it and sets REQUIRE_NGINX=1)")
    return found


def render_config(listen_port: int, upstream_port: int, workdir: Path) -> str:
    """deploy/nginx.conf with its ADAPT lines set for this test: loopback ports, the pid
    file, logs and temp files in workdir, no user switch. Nothing else changes."""
    text = CONFIG.read_text()
    replacements = [
        (r"^user [^;]+;\n", ""),
        (r"^pid [^;]+;", f"pid {workdir}/nginx.pid;"),
        (r"^error_log [^;]+;", f"error_log {workdir}/nginx-error.log warn;"),
        (r"^(\s+)listen 80;", rf"\g<1>listen 127.0.0.1:{listen_port};"),
        (r"^(\s+)server 127\.0\.0\.1:8000 ", rf"\g<1>server 127.0.0.1:{upstream_port} "),
        (r"^http \{\n", "http {\n" + "".join(f"    {kind}_temp_path {workdir}/{kind}-temp;\n"
                                            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
        assert count == 1, f"deploy/nginx.conf no longer has a line matching {pattern!r}"
    return text


def open_slow_clients(stack: ExitStack, port: int) -> list[socket.socket]:
    """Connections that send the start of a request header and then nothing more."""
    clients = []
    for i in range(SLOW_CLIENTS):
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        sock.sendall(f"POST {VOICE_PATH} HTTP/1.1\r\nHost: slow-{i}.example\r\nX-Slow: ".encode())
        clients.append(sock)
    return clients


def send_webhook(port: int, timeout: float) -> tuple[float, int | None, str]:
    """One signed Twilio voice webhook; (seconds, status, body), status None if unanswered."""
    body, headers = signed_twilio_webhook(new_call_sid())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("POST", VOICE_PATH, body=body, headers=headers)
        response = conn.getresponse()
        return time.monotonic() - started, response.status, response.read().decode()
    except (TimeoutError, socket.timeout):
        return time.monotonic() - started, None, ""
    finally:
        conn.close()


def test_a_webhook_is_answered_within_budget_through_nginx_while_200_slow_clients_hold_on():
    nginx = _nginx()
    with running_stack("sqlite", service_env={"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "8"}) as service:
        gunicorn_port = int(service.service_url.rsplit(":", 1)[1])
        nginx_port = free_port()
        conf = service.workdir / "nginx.conf"
        conf.write_text(render_config(nginx_port, gunicorn_port, service.workdir))
        check = start("nginx-check", [nginx, "-t", "-q", "-e", str(service.workdir / "nginx-error.log"),
                                      "-p", str(service.workdir), "-c", str(conf)], {}, service.workdir)
        assert check.popen.wait(timeout=10) == 0, check.log_path.read_text()
        proxy: Proc = start("nginx", [nginx, "-e", str(service.workdir / "nginx-error.log"), "-p",
                                      str(service.workdir), "-c", str(conf), "-g", "daemon off;"], {}, service.workdir)
        try:
            wait_ready(proxy, f"http://127.0.0.1:{nginx_port}/healthz", timeout=10)

            with ExitStack() as slow:
                clients = open_slow_clients(slow, nginx_port)
                time.sleep(0.5)  # nginx has them all, each waiting for the rest of its header
                seconds, status, answer = send_webhook(nginx_port, timeout=WEBHOOK_BUDGET_S + 5)
                assert status == 200, (status, answer, (service.workdir / "nginx-error.log").read_text()[-2000:])
                assert "<Connect><Stream" in answer
                assert seconds < WEBHOOK_BUDGET_S, f"answered after {seconds:.2f} s through nginx"
                # The slow clients were still connected meanwhile (nginx drops them after
                # client_header_timeout, 5 s), none of them answered.
                assert len(clients) == SLOW_CLIENTS
                for sock in clients[:5]:
                    sock.setblocking(False)
                    with pytest.raises(BlockingIOError):
                        sock.recv(1)

            # The same 200 slow clients straight at gunicorn: no thread left for the webhook.
            with ExitStack() as slow:
                open_slow_clients(slow, gunicorn_port)
                time.sleep(0.5)
                seconds, status, _ = send_webhook(gunicorn_port, timeout=WEBHOOK_BUDGET_S)
                assert status is None, f"gunicorn alone answered in {seconds:.2f} s: is the front still needed?"
        finally:
            proxy.stop()


def test_contact_lists_may_be_larger_than_other_bodies_through_nginx():
    # The app's contact route takes up to CONTACT_IMPORT_MAX_BYTES (25 MB); nginx must let
    # such a body through to it, and keep refusing it (unread) on every other route.
    nginx = _nginx()
    with running_stack("sqlite", service_env={"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "8"}) as service:
        gunicorn_port = int(service.service_url.rsplit(":", 1)[1])
        nginx_port = free_port()
        conf = service.workdir / "nginx.conf"
        conf.write_text(render_config(nginx_port, gunicorn_port, service.workdir))
        # A body this large goes to nginx's client_body temp dir in the workdir, which its
        # worker processes (another user when the test runs as root) must be able to reach.
        service.workdir.chmod(0o755)
        proxy: Proc = start("nginx", [nginx, "-e", str(service.workdir / "nginx-error.log"), "-p",
                                      str(service.workdir), "-c", str(conf), "-g", "daemon off;"], {}, service.workdir)
        try:
            wait_ready(proxy, f"http://127.0.0.1:{nginx_port}/healthz", timeout=10)
            body = b"phone\n" + b"+12125550100\n" * (2 * 1024 * 1024 // 13)   # 2 MB: over nginx's 1 MB default

            def post(path: str) -> tuple[int, str]:
                conn = http.client.HTTPConnection("127.0.0.1", nginx_port, timeout=30)
                try:
                    conn.request("POST", path, body=body, headers={"Content-Type": "text/csv"})
                    response = conn.getresponse()
                    return response.status, response.read().decode(errors="replace")
                finally:
                    conn.close()

            # Reaches the app, which answers for itself (no credentials: 401, as JSON).
            status, answer = post("/api/v1/campaigns/6f1c2f9e-8d7c-4b1e-9a55-0c3f1d2e4b5a/contacts")
            assert status == 401 and '"code"' in answer, (status, answer[:300])
            status, _answer = post("/api/v1/agents")
            assert status == 413
        finally:
            proxy.stop()
