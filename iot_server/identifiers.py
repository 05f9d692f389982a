"""Device identifiers: the uuid form SPEC.md accepts, and the MQTT username built from it."""

from __future__ import annotations

import re

# Hyphenated 8-4-4-4-12 hex in any letter case; no braces, no URN, no bare 32 hex.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DEVICE_USERNAME_PREFIX = "device_"


def parse_uuid(value: object) -> str | None:
    """The lowercase uuid, or None when `value` is not a well-formed device uuid."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        return None
    return value.lower()


def device_username(uuid: str) -> str:
    """The MQTT username of a device."""
    return DEVICE_USERNAME_PREFIX + uuid


def uuid_from_username(username: object) -> str | None:
    """The device uuid in `device_<uuid>`, or None for any other username."""
    if not isinstance(username, str) or not username.startswith(DEVICE_USERNAME_PREFIX):
        return None
    return parse_uuid(username[len(DEVICE_USERNAME_PREFIX) :])
