"""Headless Chromium for the browser tests (test_browser_cors.py, test_browser_docs.py).

Chromium and its WebDriver come from the distribution's packages (.ci/run installs them);
without them a browser test module skips itself, except when REQUIRE_BROWSER=1 (CI). The
`browser` fixture (conftest.py) drives one Chromium per test.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def skip_module_without_browser() -> None:
    """Called at the top of a browser test module."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("REQUIRE_BROWSER") == "1":
            raise RuntimeError("REQUIRE_BROWSER=1 but chromium / chromedriver are not installed")
        pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)


def headless_chrome() -> Iterator[Any]:
    """One headless Chromium, quit when the generator is closed. No proxy and no background
    networking: every request the page makes is one the test can account for."""
    # Imported here: selenium is only needed (and only installed for sure) where a browser is.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-proxy-server", "--disable-background-networking"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
