"""One error shape for the device, owner and health APIs: `{"c": CODE, "error": ...}`.

Blueprints raise `ApiError`; routing errors (404/405), the limiter's 429, oversized bodies
(413) and unexpected exceptions all pass through the app-level handlers below, so no
HTML page or stack trace ever reaches a client.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, g, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from .extensions import db

log = logging.getLogger("iot_server.errors")

OK = "OK"
NOT_REGISTERED = "NOT_REGISTERED"
FORBIDDEN = "FORBIDDEN"
BAD_REQUEST = "BAD_REQUEST"
NOT_FOUND = "NOT_FOUND"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
TOO_LARGE = "TOO_LARGE"
CONFLICT = "CONFLICT"
RATE_LIMITED = "RATE_LIMITED"
ERROR = "ERROR"
#: Every result code `c` an answer may carry (SPEC.md, "Response format").
CODES = (
    OK,
    NOT_REGISTERED,
    FORBIDDEN,
    BAD_REQUEST,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    TOO_LARGE,
    CONFLICT,
    RATE_LIMITED,
    ERROR,
)

CODE_BY_STATUS = {
    400: BAD_REQUEST,
    401: NOT_REGISTERED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    409: CONFLICT,
    413: TOO_LARGE,
    414: TOO_LARGE,  # request line over gunicorn's limit (see gunicorn_worker.py)
    429: RATE_LIMITED,
    431: TOO_LARGE,  # headers over gunicorn's limit
}

#: Methods whose requests only read, so a stale connection may be retried once.
IDEMPOTENT_METHODS = ("GET", "HEAD")
#: Exceptions that mean "the database is unreachable", as opposed to a bug in a query.
DATABASE_OUTAGE = (OperationalError, PoolTimeoutError)


class ApiError(Exception):
    """An expected failure with its result code and HTTP status."""

    def __init__(
        self,
        status: int,
        error: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(error or "")
        self.status = status
        self.code = code or CODE_BY_STATUS.get(status, ERROR)
        self.error = error
        self.headers = headers or {}


def error_response(status: int, error: str | None = None, code: str | None = None) -> Response:
    """Build the JSON answer every error path returns."""
    body = {"c": code or CODE_BY_STATUS.get(status, ERROR)}
    if error:
        body["error"] = error
    response = jsonify(body)
    response.status_code = status
    return response


def is_database_outage(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached (not a query bug)."""
    if isinstance(exc, DATABASE_OUTAGE):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def handle_api_error(exc: ApiError) -> Response:
    """Answer an expected failure raised by a blueprint or the domain."""
    response = error_response(exc.status, exc.error, exc.code)
    response.headers.update(exc.headers)
    return response


def handle_http_exception(exc: HTTPException) -> Response:
    """Routing 404/405, 413 and the limiter's 429, in our shape (headers kept)."""
    status = exc.code or 500
    error = None if status == 429 else (exc.description if status < 500 else None)
    response = error_response(status, error)
    if status == 405 and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def discard_session(exc: BaseException | None = None) -> None:
    """End the request's session; its connection may have died with the database.

    Registered after Flask-SQLAlchemy's own teardown, so it runs first: that one would
    raise from the ROLLBACK of a dead connection and turn a finished answer into a 500.
    """
    try:
        db.session.remove()
    except SQLAlchemyError as error:  # SQLAlchemy has invalidated the dead connection
        log.warning("database connection lost at the end of a request: %s", type(error).__name__)
        db.session.registry.clear()


def is_stale_connection(exc: BaseException) -> bool:
    """A pooled connection found dead when first used again (the server restarted, or an
    idle connection was dropped): SQLAlchemy has invalidated it and the pool around it."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_read(exc: Exception) -> Response | None:
    """Run a GET or HEAD once more after a stale connection: safe for a read, and with no
    round trip before every checkout (no pre-ping) this is how a restart costs nothing."""
    if not is_stale_connection(exc) or request.method not in IDEMPOTENT_METHODS:
        return None
    if g.get("database_retried"):
        return None
    g.database_retried = True
    log.info("stale database connection: running the read once more")
    try:
        return current_app.make_response(current_app.dispatch_request())
    except Exception as again:  # the retry's own failure takes the usual path
        return current_app.make_response(current_app.handle_user_exception(again))


def handle_unexpected(exc: Exception) -> Response:
    """Anything else: roll back, log the trace server-side, answer 503 or 500."""
    discard_session()
    retried = retry_read(exc)
    if retried is not None:
        return retried
    if is_database_outage(exc):
        log.error("database unavailable: %s", type(exc).__name__)
        return error_response(503, "database unavailable")
    log.exception("unhandled error")
    return error_response(500, "internal error")


def refuse_oversized_body() -> Response | None:
    """413 for a declared body over MAX_CONTENT_LENGTH, on every route: werkzeug only
    enforces the limit when a view reads the body, and most views never do."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and (request.content_length or 0) > limit:
        return error_response(413, "request body over the size limit")
    return None


def init_app(app: Flask) -> None:
    """Register the handlers on the app, so every blueprint answers alike."""
    app.before_request(refuse_oversized_body)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
    app.teardown_appcontext(discard_session)
