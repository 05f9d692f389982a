"""Hook request bodies: JSON objects, or form fields (go-auth `params_mode = form`)."""

from __future__ import annotations

from flask import Request

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def read_body(request: Request) -> dict | None:
    """A hook's fields: a JSON object, or form fields.

    `{}` for JSON that is not an object (the caller denies), None for a body that is
    neither JSON nor a form (the caller answers 400).
    """
    if request.mimetype in FORM_TYPES:
        return request.form.to_dict()
    # EMQX and go-auth send application/json; parse regardless of a missing content type.
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:  # nesting deeper than the parser's stack: not a hook body
        return None
    if data is None:
        return None
    return data if isinstance(data, dict) else {}
