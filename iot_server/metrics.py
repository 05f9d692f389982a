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
    counter = _HOOK_COUNTERS.get((hook, result))
    if counter is None:  # bounded: hooks and results are fixed sets
        counter = _HOOK_COUNTERS[hook, result] = HOOK_DECISIONS.labels(hook, result)
    counter.inc()


_HOOK_COUNTERS: dict[tuple[str, str], Counter] = {}


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


#: The `method` label's values; any other method a caller invents is `other`.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The label of anything outside a fixed set (an unknown method, path or status).
OTHER = "other"


def record_request(response):
    """Count the request under labels from fixed sets: its route pattern (not its raw path),
    a known method, a status code (400 random methods once made 400 permanent series)."""
    started = g.pop("metrics_started", None)
    endpoint = request.url_rule.rule if request.url_rule else OTHER
    method = request.method if request.method in METHODS else OTHER
    status = response.status_code
    key = (endpoint, method, str(status) if 100 <= status < 600 else OTHER)
    counter = _REQUEST_COUNTERS.get(key)
    if counter is None:  # bounded: the labels come from fixed sets
        counter = _REQUEST_COUNTERS[key] = HTTP_REQUESTS.labels(*key)
    counter.inc()
    if started is not None:
        timer = _LATENCY_TIMERS.get(endpoint)
        if timer is None:
            timer = _LATENCY_TIMERS[endpoint] = HTTP_LATENCY.labels(endpoint)
        timer.observe(time.perf_counter() - started)
    return response


#: Children of the request metrics, bound once per label set (labels() takes a lock and
#: builds a key at every call; a hook request is short enough for that to show).
_REQUEST_COUNTERS: dict[tuple[str, str, str], Counter] = {}
_LATENCY_TIMERS: dict[str, Histogram] = {}


def init_app(app: Flask) -> None:
    """Time and count every request."""
    app.before_request(start_timer)
    app.after_request(record_request)
