"""Identifiers and their one written form: device uuids, MQTT usernames, owner usernames.

The owner API's validation, the OpenAPI document and the hooks all use these patterns, so
changing a rule here changes every place that states it.
"""

from __future__ import annotations

import re

#: Hyphenated 8-4-4-4-12 hex in any letter case; no braces, no URN, no bare 32 hex.
UUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: How a uuid is stored, compared and shown: lowercase.
STORED_UUID_PATTERN = UUID_PATTERN.replace("a-fA-F", "a-f")
DEVICE_USERNAME_PREFIX = "device_"

#: Owner usernames: 3-64 of `a-z 0-9 _ . -`, any letter case (stored lowercase), ASCII only.
USERNAME_PATTERN = r"[A-Za-z0-9_.-]{3,64}"
USERNAME_FORM = "3-64 characters of a-z 0-9 _ . -"

UUID_FORM = "a hyphenated 8-4-4-4-12 hex uuid"

_UUID = re.compile(UUID_PATTERN)
_USERNAME = re.compile(USERNAME_PATTERN)


def parse_uuid(value: object) -> str | None:
    """The lowercase uuid, or None when `value` is not a well-formed device uuid."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        return None
    return value.lower()


def uuid_from_username(username: object) -> str | None:
    """The device uuid in `device_<uuid>`, or None for any other username."""
    if not isinstance(username, str) or not username.startswith(DEVICE_USERNAME_PREFIX):
        return None
    return parse_uuid(username[len(DEVICE_USERNAME_PREFIX) :])


def parse_username(value: object) -> str | None:
    """The lowercase owner username, or None when `value` is not a well-formed one."""
    # ASCII checked before lowercasing: str.lower() maps the Kelvin sign (U+212A) to "k".
    if not isinstance(value, str) or not value.isascii() or not _USERNAME.fullmatch(value):
        return None
    return value.lower()
