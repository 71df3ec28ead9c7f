"""gunicorn settings for `make run` and the Procfile's web process.

Webhook handlers spend most of their time waiting on Ultravox, so each worker
process runs many threads (gthread): concurrency comes from threads, processes
give CPU parallelism and isolation.
"""
import errno
import gc
import os
import tempfile

from gunicorn.workers.gthread import TConn, ThreadWorker

from telephony.config import load_env_file
from telephony.logging import write_in_background

# The settings below (PORT, WEB_CONCURRENCY, GUNICORN_THREADS, ...) are read here, in the
# master, before any worker imports the app: a .env file must reach them too (wsgi.py
# reads the same file for the app's own settings; the environment wins over both).
load_env_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env"))


class DrainingThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, which on SIGTERM also answers the connections waiting in
    the listen backlog.

    A stopping gthread worker finishes the requests it has accepted but stops accepting at
    once; connections the kernel had already completed and queued (the client connected
    and sent its request) stayed there until the last process closed the listening
    socket, and were then reset: a burst of webhooks hit by a deploy lost most of them.
    Here the stopping worker first accepts everything queued, then closes its copy of the
    listening socket, so that once every worker has done the same the port refuses new
    connections straight away (a proxy retries a refused connection on another upstream)
    instead of queueing connections nobody will accept.
    """

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self._drain_backlog()

    def _drain_backlog(self):
        drained = 0
        for listener in self.sockets:
            listener.setblocking(False)
            while True:
                try:
                    client, address = listener.accept()
                except OSError as error:
                    if error.errno == errno.ECONNABORTED:
                        continue  # the client gave up while queued
                    break  # EAGAIN: the queue is empty
                self.nr_conns += 1
                client.setblocking(True)
                self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))
                drained += 1
            listener.close()
        if drained:
            self.log.info("Stopping: accepted %d queued connection(s) to answer them", drained)


bind = f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
worker_class = DrainingThreadWorker  # gthread (see above)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Each inbound webhook holds its thread while Ultravox creates the call (up to
# INBOUND_ULTRAVOX_BUDGET, 5 s), but holds no database connection meanwhile, so
# threads are cheap: 2 x 128 serves a burst of 200 simultaneous calls in one wave
# (bench/inbound.py). Database connections are pooled per process (db.py).
threads = int(os.environ.get("GUNICORN_THREADS", "128"))
# Twilio gives up on a webhook after 15 s; nothing of ours should run longer.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# SIGTERM (a deploy, a scale-down): the workers answer every request in flight, i.e.
# every connection accepted or already queued in the listen backlog (see
# DrainingThreadWorker), then exit; after the last one the port refuses connections. A
# webhook needs at most the carriers' 15 s, so 20 s covers the slowest, and stays under
# the 30 s most platforms wait after SIGTERM before they SIGKILL.
graceful_timeout = 20
keepalive = 5
backlog = 2048
accesslog = None  # the app writes its own structured access log
errorlog = "-"

# The app is imported once, in the master, and the workers are forked from it, so they
# share its loaded code and data instead of each importing its own copy (measured after
# 1,900 webhooks: ~96 MB resident per worker instead of ~106, ~54 MB proportional instead of
# ~85; docs/benchmarks.md, session 7). Nothing opens a database connection or a thread while
# the app is created, so the workers inherit no pooled connection. The price: a HUP restarts
# the workers with the code the master loaded; deploy new code with a restart.
preload_app = True

# Prometheus: each worker process writes its samples to a shared directory and
# /metrics aggregates them, so a scrape sees all workers, not just one. Give the
# `flask worker run` processes of this host the same directory (`make run` and
# docker-compose.yml do) and their samples are in the same scrape (telephony/metrics.py).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="telephony-metrics-")


def pre_fork(server, worker):
    # Before each fork: what the master loaded (the app, with preload_app) leaves the
    # collector's sight, so no collection in a worker writes to those objects' pages and
    # un-shares them (see post_worker_init for the other reason).
    gc.freeze()


def post_worker_init(worker):
    # The app and its libraries (Flask, SQLAlchemy, the carrier SDKs) leave ~320,000
    # objects behind at import, and every full (generation 2) garbage collection walked
    # them all: 200-250 ms during which every request of the worker stood still (the
    # inbound benchmark's p99 outliers). They live as long as the process, so they are
    # moved out of the collector's sight once the app is loaded; a full collection then
    # takes a few ms.
    gc.freeze()
    # 128 request threads writing log lines each under the handler's lock queued on it:
    # a worker's lines are written by one background thread instead (telephony/logging.py).
    write_in_background()


def child_exit(server, worker):
    from telephony.metrics import metrics_process_exited
    metrics_process_exited(worker.pid)
