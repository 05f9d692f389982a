"""Logging, configured once in the factory: JSON lines in production, text in development.

Every line carries the request id (`X-Request-ID`, echoed back, generated when absent) and
a short logger name (`auth`, `hooks.emqx`, `pinger`, ...).
"""

from __future__ import annotations

import logging
import re
import sys
import uuid

from flask import Flask, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

ROOT_LOGGER = "iot_server"
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


class GunicornAccessFormatter(JsonLineFormatter):
    """gunicorn's access log as the same JSON lines (its atoms arrive in `record.args`)."""

    def add_fields(self, log_data, record, message_dict) -> None:
        super().add_fields(log_data, record, message_dict)
        atoms = record.args if isinstance(record.args, dict) else {}
        log_data.update(
            {
                "logger": "access",
                "remote": atoms.get("h"),
                "method": atoms.get("m"),
                "path": atoms.get("U"),
                "status": atoms.get("s"),
                "duration_ms": round(float(atoms.get("L") or 0) * 1000, 2),
                "bytes": atoms.get("B"),
                "request_id": atoms.get("{x-request-id}o") or "-",
            }
        )


def build_handler(log_format: str) -> logging.Handler:
    """A stderr handler with our formatter and context filter."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-5s [%(area)s] [%(request_id)s] %(message)s")
        )
    handler.addFilter(ContextFilter())
    return handler


def configure(log_format: str, debug: bool) -> None:
    """Point the `iot_server` logger tree at one handler (idempotent)."""
    logger = logging.getLogger(ROOT_LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_iot_server", False)]:
        logger.removeHandler(old)
    handler = build_handler(log_format)
    handler._iot_server = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    # Records still propagate so pytest's caplog sees them; the root has no handler in
    # production, so nothing is written twice.


def assign_request_id() -> None:
    """Take the caller's `X-Request-ID` when it is sane, else make one."""
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def echo_request_id(response):
    """Return the request id so a client can quote it in a bug report."""
    response.headers["X-Request-ID"] = g.get("request_id", "-")
    return response


def init_app(app: Flask) -> None:
    """Configure logging from the app's config and tag requests with an id."""
    configure(app.config["LOG_FORMAT"], app.config["DEBUG_LOGS"])
    app.before_request(assign_request_id)
    app.after_request(echo_request_id)
