"""gunicorn pieces: a worker whose own error pages are JSON too, and a cheaper access log.

gunicorn answers protocol-level errors (a request line over `limit_request_line`, oversized
or malformed headers) itself, before the app sees the request, with an HTML page
(`gunicorn.util.write_error`). The contract says no HTML whatever the input, so the worker
writes the same `{"c": ...}` shape as the app.
"""

from __future__ import annotations

import json
import logging

from gunicorn import glogging, util
from gunicorn.workers.gthread import ThreadWorker

from .errors import CODE_BY_STATUS, ERROR


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `write_error` with a JSON body in our error shape."""
    body = json.dumps({"c": CODE_BY_STATUS.get(status_int, ERROR), "error": reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


class JsonErrorThreadWorker(ThreadWorker):
    """The gthread worker, with JSON error pages."""

    def init_process(self) -> None:
        # Process-wide in this worker only: every caller of write_error is gunicorn's
        # error path for a request it could not hand to the app.
        util.write_error = write_json_error
        super().init_process()


class AccessLogger(glogging.Logger):
    """gunicorn's logger, with an access record built from the few fields we log.

    gunicorn's own `access()` makes an atom of every request and response header and
    formats them twice (its atoms wrapper, then the formatter): a noticeable share of a
    hook request. This passes only our fields; `AccessJsonFormatter` writes them.
    """

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        query = environ.get("QUERY_STRING") or None
        # gunicorn's own error answers (write_error) set `status` ("400 Bad Request") only.
        status = getattr(resp, "status_code", None) or int(str(resp.status).split(None, 1)[0])
        fields = {
            "request_id": next((v for k, v in resp.headers if k.lower() == "x-request-id"), "-"),
            "remote": environ.get("REMOTE_ADDR"),
            "method": method,
            "path": path,
            "query": query,
            "status": status,
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "bytes": getattr(resp, "sent", None),
        }
        target = f"{path}?{query}" if query else path
        try:
            self.access_log.info("%s %s %s", method, target, status, extra=fields)
        except Exception:  # as gunicorn's own: a failed log line must not fail the answer
            self.error("cannot write an access log line", exc_info=True)


#: What an access line carries besides time, level, logger and message.
ACCESS_FIELDS = (
    "request_id",
    "remote",
    "method",
    "path",
    "query",
    "status",
    "duration_ms",
    "bytes",
)


class AccessJsonFormatter(logging.Formatter):
    """An access record as one JSON object: the app's keys, then the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": "access",
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            line[name] = getattr(record, name, None)
        return json.dumps(line, ensure_ascii=False)
