"""Hook request bodies: JSON objects, or form fields (go-auth `params_mode = form`)."""

from __future__ import annotations

import json

from flask import Request
from flask import request as current_request

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def raw_body(request: Request) -> bytes:
    """The request's bytes. With a Content-Length (every broker sends one, and anything
    over MAX_CONTENT_LENGTH was refused before the view), straight from the WSGI input:
    werkzeug's limited-stream layers cost a hook call more than the read."""
    length = request.content_length
    if length is None:
        return request.get_data()
    return request.environ["wsgi.input"].read(length) if length else b""


def read_body() -> dict | None:
    """The current request's hook fields: a JSON object, or form fields.

    `{}` for JSON that is not an object (the caller denies), None for a body that is
    neither JSON nor a form (the caller answers 400).
    """
    # Flask's `request` is a proxy that looks the request up at every attribute: once here.
    request = current_request._get_current_object()
    # The bare media type, without werkzeug's full parse of the header's options.
    mimetype = request.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if mimetype in FORM_TYPES:
        return request.form.to_dict()
    # EMQX and go-auth send application/json; parse regardless of a missing content type.
    # json.loads directly: Flask's get_json() adds content-type and caching layers that
    # cost a hook call more than the parse itself.
    raw = raw_body(request)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        return None
    if data is None:
        return None
    return data if isinstance(data, dict) else {}
