"""gunicorn settings for `make run` and the Procfile's web process.

Webhook handlers spend most of their time waiting on Ultravox, so each worker
process runs many threads (gthread): concurrency comes from threads, processes
give CPU parallelism and isolation.
"""
import gc
import os
import tempfile

bind = f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Each inbound webhook holds its thread while Ultravox creates the call (up to
# INBOUND_ULTRAVOX_BUDGET, 5 s), but holds no database connection meanwhile, so
# threads are cheap: 2 x 128 serves a burst of 200 simultaneous calls in one wave
# (bench/inbound.py). Database connections are pooled per process (db.py).
threads = int(os.environ.get("GUNICORN_THREADS", "128"))
# Twilio gives up on a webhook after 15 s; nothing of ours should run longer.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
backlog = 2048
accesslog = None  # the app writes its own structured access log
errorlog = "-"

# Prometheus: each worker process writes its samples to a shared directory and
# /metrics aggregates them, so a scrape sees all workers, not just one.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="telephony-metrics-")


def post_worker_init(worker):
    # The app and its libraries (Flask, SQLAlchemy, the carrier SDKs) leave ~320,000
    # objects behind at import, and every full (generation 2) garbage collection walked
    # them all: 200-250 ms during which every request of the worker stood still (the
    # inbound benchmark's p99 outliers). They live as long as the process, so they are
    # moved out of the collector's sight once the app is loaded; a full collection then
    # takes a few ms.
    gc.freeze()


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
