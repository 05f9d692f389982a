"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`.

gunicorn also loads this file by itself from the working directory, so a bare
`gunicorn wsgi:app` gets the same checks and settings.
"""

import os
import sys
import tempfile

from iot_server.config import Config
from iot_server.logs import logging_config

_config = Config()

# Refuse to start without the database, with missing, short or equal secrets, or with
# IOT_ENV=testing: one line naming every problem and how to make a secret, exit 1
# (Config.startup_problems()).
_problems = _config.startup_problems()
if _problems:
    sys.exit("iot_server: " + "; ".join(_problems))

# Prometheus multiprocess mode: every worker writes its samples here and /metrics sums
# them. It must be set before prometheus_client is imported by the app.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="iot_server_metrics_")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = _config.WEB_CONCURRENCY
# gthread, with JSON error pages for requests gunicorn rejects itself. Threads give
# keep-alive to brokers' connection pools (EMQX keeps 8 open) and overlap database waits.
worker_class = "iot_server.gunicorn_worker.JsonErrorThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = 30
timeout = 30
graceful_timeout = 20
forwarded_allow_ips = "*" if _config.TRUSTED_PROXIES else "127.0.0.1"
# gunicorn's control socket lives at one fixed path per user: two instances on one host
# would take it from each other, and nothing here uses it.
control_socket_disable = True

# The access log as JSON lines like the app's (AccessLogger writes only our fields), and
# the app's own logging configuration, so every line is written once, in one format.
accesslog = "-"
logger_class = "iot_server.gunicorn_worker.AccessLogger"
logconfig_dict = logging_config(_config.LOG_FORMAT, _config.DEBUG_LOGS)


def post_worker_init(worker):
    """Start the worker's device-state listener before its first request: the cache fills
    while the worker boots, so a reconnect storm right after a deploy finds it full."""
    from flask import Flask

    from iot_server.broker.caches import start_listening

    if isinstance(worker.wsgi, Flask):  # another app (bench/bare_app.py) has no listener
        start_listening(worker.wsgi)


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the multiprocess metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    """Say it when the rate limits are counted per worker rather than for the server."""
    count = server.cfg.workers  # this file's `workers`, or a `-w` given on the command line
    if _config.RATELIMIT_STORAGE_URI.startswith("memory://") and count > 1:
        server.log.warning(
            "RATELIMIT_STORAGE_URI is memory:// with %d workers: every worker counts alone, "
            "so each limit is %d times looser; use redis://",
            count,
            count,
        )
