"""Who is calling: the one bearer-token check of the device and owner routes."""

from __future__ import annotations

from flask import request

from .. import devices, owners, tokens
from ..errors import ApiError
from ..models import Device, Owner

#: Finds the account a verified token of each role stands for, or None when it may not.
_HOLDERS = {tokens.DEVICE: devices.token_holder, tokens.OWNER: owners.token_holder}


def require_token(role: str) -> Device | Owner:
    """The device or owner whose `Bearer` token of `role` authorises this request.

    403 for a missing, malformed, expired or wrong-role token, and for a token its holder
    may no longer use (revoked, disabled, unregistered device; deleted owner).
    """
    try:
        claims = tokens.verify(tokens.bearer_token(request.headers.get("Authorization")), role)
    except tokens.InvalidToken:
        raise ApiError(403, f"missing, invalid or expired {role} token") from None
    holder = _HOLDERS[role](claims)
    if holder is None:
        raise ApiError(403, f"{role} token no longer valid")
    return holder
