"""Logging: one configuration for gunicorn and the app, JSON lines in production, text in
development, each line written once.

Every line carries the request id (`X-Request-ID`, echoed back, generated when absent) and
a short logger name (`auth`, `hooks.emqx`, `pinger`, ...).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import threading

from flask import Flask, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

ROOT_LOGGER = "iot_server"
#: Other libraries whose INFO lines an operator needs: the limiter says when its storage
#: (Redis) is back, after warning that it was lost.
INFO_LOGGERS = ("flask-limiter",)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ContextFilter(logging.Filter):
    """Add `request_id` and the short `area` name to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        name = record.name
        record.area = name[len(ROOT_LOGGER) + 1 :] if name.startswith(ROOT_LOGGER + ".") else name
        return True


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(area)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "area": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )


class AppLogHandler(logging.StreamHandler):
    """The one handler of every process, on the root logger: stderr, our format, our
    context. Its class marks it, so the app never adds a second one."""

    def __init__(self, log_format: str = "json") -> None:
        super().__init__(sys.stderr)
        self.setFormatter(JsonLineFormatter() if log_format == "json" else TextFormatter())
        self.addFilter(ContextFilter())


class TextFormatter(logging.Formatter):
    """One readable line for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s [%(area)s] [%(request_id)s] %(message)s")


def app_log_level(debug: bool) -> str:
    """The level of our own loggers; everyone else's stays at WARNING."""
    return "DEBUG" if debug else "INFO"


def logging_config(log_format: str, debug: bool) -> dict:
    """The whole logging setup as a `dictConfig` mapping: gunicorn loads it
    (`logconfig_dict`), and `configure()` gives other processes the same handler and levels.

    Records propagate to the root's single handler and are written there once; gunicorn's
    own loggers write through that handler too, and its access log goes to stdout.
    """
    handler = {"()": AppLogHandler, "log_format": log_format}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "access": (
                {"()": "iot_server.gunicorn_worker.AccessJsonFormatter"}
                if log_format == "json"
                else {"format": "%(asctime)s access %(remote)s %(message)s %(duration_ms)sms"}
            )
        },
        "filters": {"context": {"()": ContextFilter}},
        "handlers": {
            "app": handler,
            "access": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "access",
                "filters": ["context"],
            },
        },
        "root": {"level": "WARNING", "handlers": ["app"]},
        "loggers": {
            ROOT_LOGGER: {"level": app_log_level(debug)},
            **{name: {"level": "INFO"} for name in INFO_LOGGERS},
            "gunicorn.error": {"level": "INFO", "handlers": ["app"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }


def configure(log_format: str, debug: bool) -> None:
    """Apply `logging_config()` in a process gunicorn did not set up (flask run, the pinger,
    the CLI, tests): the same root handler, added once, and the same levels. The root's
    other handlers (pytest's capture) are left alone."""
    root = logging.getLogger()
    if not any(isinstance(handler, AppLogHandler) for handler in root.handlers):
        root.addHandler(AppLogHandler(log_format))
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
    logging.getLogger(ROOT_LOGGER).setLevel(app_log_level(debug))
    for name in INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


class RequestIds:
    """Fresh request ids: 16 random hex digits per process, then a 16-digit counter.

    Unique across processes and restarts like a uuid4, without reading the kernel's random
    source on every request (a visible share of a hook request under load).
    """

    def __init__(self) -> None:
        self._pid: int | None = None
        self._prefix = ""
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def new(self) -> str:
        """The next id; a forked worker draws its own prefix on first use."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._prefix, self._counter = os.urandom(8).hex(), itertools.count()
                    self._pid = os.getpid()
        return f"{self._prefix}{next(self._counter):016x}"


request_ids = RequestIds()


def assign_request_id() -> None:
    """Take the caller's `X-Request-ID` when it is sane, else make one."""
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else request_ids.new()


def echo_request_id(response):
    """Return the request id so a client can quote it in a bug report."""
    response.headers["X-Request-ID"] = g.get("request_id", "-")
    return response


def init_app(app: Flask) -> None:
    """Configure logging from the app's config and tag requests with an id."""
    configure(app.config["LOG_FORMAT"], app.config["DEBUG_LOGS"])
    app.before_request(assign_request_id)
    app.after_request(echo_request_id)
