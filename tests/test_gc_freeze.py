"""Long-lived processes move what the app loaded out of the garbage collector's sight
(gc.freeze), so a full collection does not stop every request for ~200 ms."""
from __future__ import annotations

import gc
import runpy
from pathlib import Path

import pytest

from telephony import worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process itself keeps collecting everything


def test_gunicorn_workers_freeze_what_the_app_loaded(unfrozen, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert gc.get_freeze_count() == 0
    settings["post_worker_init"](None)
    assert gc.get_freeze_count() > 10_000  # the modules, classes and functions imported so far


def test_the_background_worker_freezes_what_the_app_loaded(unfrozen, app, monkeypatch):
    config = app.extensions["telephony.config"]
    app.extensions["telephony.config"] = config.with_overrides(dispatch_threads=0)  # no dispatcher here
    frozen_when_running: list[int] = []
    monkeypatch.setattr(worker.Worker, "run_forever", lambda self: frozen_when_running.append(gc.get_freeze_count()))
    worker.main_loop(app)
    assert frozen_when_running and frozen_when_running[0] > 10_000
