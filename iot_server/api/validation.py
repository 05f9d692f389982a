"""Request validation for the owner API: JSON object bodies and uuid path parameters.

Every failure is an `ApiError(400)` whose message names the offending field, so a client
learns what to fix. Bodies must be JSON objects with known fields only; strings are checked
for type, length, form and for text a database can store (no NUL, no lone surrogates).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from flask import request

from ..errors import ApiError
from ..identifiers import UUID_FORM, parse_uuid
from ..models import CONTROL_CHARACTERS, is_storable

_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")


@dataclass(frozen=True)
class Text:
    """A string field: length bounds in characters, an optional regex form, maybe null."""

    min_length: int = 0
    max_length: int | None = None
    pattern: re.Pattern | None = None
    form: str = ""
    required: bool = True
    nullable: bool = False
    printable: bool = False

    def json_schema(self) -> dict:
        """The same rule as a JSON Schema (the OpenAPI document is built from it)."""
        schema: dict = {"type": ["string", "null"] if self.nullable else "string"}
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = f"^{self.pattern.pattern}$"
        elif self.printable:
            schema["pattern"] = f"^[^{CONTROL_CHARACTERS}]*$"
        return schema


def object_schema(fields: dict[str, Text]) -> dict:
    """The JSON Schema of a request body checked by `body(fields)`."""
    return {
        "type": "object",
        "required": [name for name, spec in fields.items() if spec.required],
        "additionalProperties": False,
        "properties": {name: spec.json_schema() for name, spec in fields.items()},
    }


def json_object() -> dict:
    """The request body as a JSON object; 400 for anything else (not JSON, array, null)."""
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):  # RecursionError: nesting too deep to parse
        raise ApiError(400, "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def body(fields: dict[str, Text]) -> dict:
    """The request body checked against `fields`; unknown, missing or bad fields are 400."""
    data = json_object()
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ApiError(400, "unknown field(s): " + ", ".join(unknown))
    missing = [name for name, spec in fields.items() if spec.required and name not in data]
    if missing:
        raise ApiError(400, "missing field(s): " + ", ".join(missing))
    return {name: check_text(name, data[name], fields[name]) for name in fields if name in data}


def check_text(name: str, value: object, spec: Text) -> str | None:
    """`value` when it satisfies `spec`; 400 naming the field otherwise."""
    if value is None and spec.nullable:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string" + (" or null" if spec.nullable else ""))
    if not is_storable(value):
        # PostgreSQL rejects NUL in text and lone surrogates cannot be encoded as UTF-8.
        raise ApiError(400, f"{name} must be valid Unicode text without NUL characters")
    if spec.printable and _CONTROL.search(value):
        raise ApiError(400, f"{name} must not contain control characters")
    too_long = spec.max_length is not None and len(value) > spec.max_length
    if len(value) < spec.min_length or too_long:
        upper = spec.max_length if spec.max_length is not None else "any"
        raise ApiError(400, f"{name} must be {spec.min_length}-{upper} characters")
    if spec.pattern is not None and not spec.pattern.fullmatch(value):
        raise ApiError(400, f"{name} must be {spec.form}")
    return value


def require_uuid(value: str | None, name: str = "uuid") -> str:
    """The lowercase device uuid from a path segment or query value; 400 when malformed."""
    uuid = parse_uuid(value)
    if uuid is None:
        raise ApiError(400, f"{name} must be {UUID_FORM}")
    return uuid
