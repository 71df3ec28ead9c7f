"""The dashboard calls the API from a browser: CORS checked by a real headless Chromium.

The service runs on one loopback port; two tiny pages are served from two other ports
(two origins). The page on the origin in CORS_ORIGINS fetches /api/v1/me with a bearer
token and reads the answer; the page on the other origin is refused by the browser.
Chromium and its WebDriver come from the distribution's packages (.ci/run installs
them); without them the test is skipped, except when REQUIRE_BROWSER=1 (CI).
"""
from __future__ import annotations

import http.server
import threading
import uuid
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet
from werkzeug.serving import make_server

from telephony import create_app
from telephony.auth import mint_token
from telephony.config import Config
from telephony.models import Role
from telephony.services.agencies import add_user, create_agency
from tests.browser_helpers import skip_module_without_browser
from tests.conftest import JWT_SECRET

PAGE = """<!doctype html><html><body><div id="result">pending</div><script>
const query = new URLSearchParams(location.search);
fetch(query.get("api") + "/api/v1/me", {headers: {"Authorization": "Bearer " + query.get("token")}})
  .then(async r => { document.getElementById("result").textContent = r.status + " " + (await r.text()); })
  .catch(e => { document.getElementById("result").textContent = "blocked " + e.name; });
</script></body></html>"""

skip_module_without_browser()


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def serve():
    servers = []

    def start(server) -> str:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(timeout=5)


def read_result(browser, page: str, api: str, token: str) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{page}/?api={quote(api)}&token={quote(token)}")
    WebDriverWait(browser, 15).until(lambda b: b.find_element("id", "result").text != "pending")
    return browser.find_element("id", "result").text


def test_an_allowed_origin_reads_the_api_and_another_is_refused(sqlite_url, tmp_path, serve, browser):
    allowed = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page))
    other = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page))
    app = create_app(Config(database_url=sqlite_url, credentials_keys=(Fernet.generate_key().decode(),),
                            jwt_secret=JWT_SECRET, cors_origins=(allowed,)),
                     instance_path=str(tmp_path / "instance"))
    subject = f"dashboard-{uuid.uuid4().hex[:8]}"
    with app.extensions["telephony.db"].session() as session:
        agency = create_agency(session, "Browser Agency", credit_balance=60)
        add_user(session, auth_subject=subject, agency_id=agency.id, role=Role.admin)
        agency_id = str(agency.id)
    api = serve(make_server("127.0.0.1", 0, app, threaded=True))
    token = mint_token(JWT_SECRET, subject)

    status, _, body = read_result(browser, allowed, api, token).partition(" ")
    assert status == "200" and agency_id in body

    assert read_result(browser, other, api, token).startswith("blocked")
    app.extensions["telephony.db"].dispose()
