"""gunicorn settings for `make run` and the Procfile's web process.

Webhook handlers spend most of their time waiting on Ultravox, so each worker
process runs many threads (gthread): concurrency comes from threads, processes
give CPU parallelism and isolation.
"""
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


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
