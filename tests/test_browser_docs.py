"""The API explorer at /docs renders in a real headless Chromium, from our origin alone.

Like tests/test_browser_cors.py: Chromium and its WebDriver come from the distribution's
packages (.ci/run installs them); without them the test is skipped, except when
REQUIRE_BROWSER=1 (CI). The browser runs with --no-proxy-server and background networking
off; every resource the page loaded is checked to come from the service itself.
"""
from __future__ import annotations

import threading

import pytest
from cryptography.fernet import Fernet
from werkzeug.serving import make_server

from telephony import create_app
from telephony.config import Config
from tests.browser_helpers import skip_module_without_browser

skip_module_without_browser()


@pytest.fixture
def service(tmp_path):
    app = create_app(Config(database_url="sqlite://", credentials_keys=(Fernet.generate_key().decode(),)),
                     instance_path=str(tmp_path / "instance"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)
    app.extensions["telephony.db"].dispose()


def test_the_explorer_lists_every_operation_and_loads_nothing_from_elsewhere(browser, service):
    from selenium.webdriver.support.ui import WebDriverWait

    app, origin = service
    document = app.test_client().get("/openapi.json").json
    operations = sum(len(item) for item in document["paths"].values())

    browser.get(f"{origin}/docs/")
    # Swagger UI renders one .opblock per operation (paths) and per webhook.
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements("css selector", ".opblock")) >= operations)
    assert browser.find_elements("css selector", ".errors-wrapper") == []  # no "could not render" box
    summaries = browser.execute_script(
        "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
    assert "/api/v1/calls" in [s.replace("\u200b", "") for s in summaries]
    webhooks = len(document["webhooks"])
    assert len(browser.find_elements("css selector", ".opblock")) == operations + webhooks

    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(origin + "/") for url in loaded), loaded
