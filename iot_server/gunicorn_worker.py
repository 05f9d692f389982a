"""gunicorn worker whose own error pages are JSON too.

gunicorn answers protocol-level errors (a request line over `limit_request_line`, oversized
or malformed headers) itself, before the app sees the request, with an HTML page
(`gunicorn.util.write_error`). The contract says no HTML whatever the input, so the worker
writes the same `{"c": ...}` shape as the app.
"""

from __future__ import annotations

import json

from gunicorn import util
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
