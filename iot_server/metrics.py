"""Prometheus metrics, summed over gunicorn workers in multiprocess mode.

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before the app is imported; without it
(development, tests) the ordinary in-process registry is served.
"""

from __future__ import annotations

import os
import time

from flask import Flask, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

HTTP_REQUESTS = Counter(
    "iot_http_requests_total",
    "HTTP requests by endpoint and status",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "iot_http_request_duration_seconds",
    "HTTP request latency by endpoint",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
HOOK_DECISIONS = Counter(
    "iot_hook_decisions_total", "Broker hook decisions by hook and result", ["hook", "result"]
)
REGISTRATIONS = Counter(
    "iot_registrations_total", "Device token requests by result code", ["result"]
)
DEVICE_STATES = Counter(
    "iot_device_state_reads_total",
    "Device states the hooks needed, by source: the exact cache (hit), the database after a "
    "miss (miss), or the database while the cache is not trusted (uncached)",
    ["source"],
)
#: Children bound once: a hook's hot path only increments.
_STATE_SOURCES = {name: DEVICE_STATES.labels(name) for name in ("hit", "miss", "uncached")}


def count_device_state(source: str) -> None:
    """Count where a hook's device state came from (hit, miss, uncached)."""
    _STATE_SOURCES[source].inc()


def count_hook_decision(hook: str, result: str) -> None:
    """Count one broker hook decision (allow, deny, ignore, malformed, forbidden)."""
    HOOK_DECISIONS.labels(hook, result).inc()


def registry() -> CollectorRegistry:
    """The registry to expose: a multiprocess aggregate under gunicorn, else the default."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    return DEFAULT_REGISTRY


def render() -> tuple[bytes, str]:
    """Prometheus text exposition of every metric."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def start_timer() -> None:
    """Remember when the request started."""
    g.metrics_started = time.perf_counter()


def record_request(response):
    """Count the request under its route pattern (not its raw path: bounded labels)."""
    started = g.pop("metrics_started", None)
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
    if started is not None:
        HTTP_LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    return response


def init_app(app: Flask) -> None:
    """Time and count every request."""
    app.before_request(start_timer)
    app.after_request(record_request)
