"""Log lines of a web worker, written by a background thread (telephony/logging.py):
every line arrives, in order, warnings at once, the rest at exit at the latest."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from telephony import logging as telephony_logging
from telephony.logging import configure_logging, write_in_background

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def background(capsys, monkeypatch):
    monkeypatch.setattr(telephony_logging, "BACKGROUND_WRITE_SECONDS", 3600)  # the test says when
    configure_logging("INFO")
    write_in_background()
    yield capsys
    configure_logging("INFO")  # a handler of its own again, writing at once


def _messages(text: str) -> list[str]:
    return [json.loads(line)["msg"] for line in text.splitlines()]


def test_info_lines_are_queued_and_a_warning_writes_them_first_in_order(background):
    log = logging.getLogger("telephony.test")
    log.info("first")
    log.info("second")
    assert _messages(background.readouterr().err) == []  # queued, not written yet
    log.warning("third")
    assert _messages(background.readouterr().err) == ["first", "second", "third"]


def test_queued_lines_are_written_by_the_background_thread(background):
    logging.getLogger("telephony.test").info("later", extra={"route": "/x"})
    for handler in logging.getLogger().handlers:  # what the thread does every few ms
        getattr(handler, "flush_queued", lambda: None)()
    [line] = background.readouterr().err.splitlines()
    assert json.loads(line)["msg"] == "later" and json.loads(line)["route"] == "/x"


def test_what_is_queued_is_written_at_exit():
    script = textwrap.dedent("""
        import logging
        from telephony.logging import configure_logging, write_in_background
        configure_logging("INFO")
        write_in_background()
        for n in range(50):
            logging.getLogger("telephony.test").info("line %d", n)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert _messages(done.stderr) == [f"line {n}" for n in range(50)], done.stderr[:500]
