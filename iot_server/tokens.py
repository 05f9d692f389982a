"""Issue device and owner tokens (flask-jwt-extended) and verify them (PyJWT, HS256 pinned).

Device tokens: `sub` = uuid, `role` = "device", `kind`, `ver` (the device's token version).
Owner tokens: `sub` = owner id, `role` = "owner", `ver` (the owner's token version).
`verify()` always names the role it expects, so neither kind of token can stand in for the
other. Both allow `JWT_DECODE_LEEWAY` (30 s) of clock skew on `iat` and `exp`.

Verification calls PyJWT directly with the settings flask-jwt-extended issues with: its
own `decode_token()` does the same checks through layers of configuration lookups and
callbacks, three times the cost on the broker's login hook, where a new token is checked
at every reconnect storm.
"""

from __future__ import annotations

from datetime import timedelta

import jwt
from flask import current_app
from flask_jwt_extended import create_access_token
from jwt import PyJWTError

from .models import Device, Owner

DEVICE = "device"
OWNER = "owner"


class InvalidToken(Exception):
    """The token is missing, malformed, badly signed, expired or of the wrong role."""


def issue_device_token(device: Device) -> str:
    """A token for `device` at its current token version."""
    return create_access_token(
        identity=device.uuid,
        additional_claims={"role": DEVICE, "kind": device.kind, "ver": device.token_version},
        expires_delta=timedelta(seconds=current_app.config["DEVICE_TOKEN_TTL"]),
    )


def issue_owner_token(owner: Owner) -> str:
    """A token for an owner account at its current token version."""
    return create_access_token(
        identity=str(owner.id),
        additional_claims={"role": OWNER, "ver": owner.token_version},
        expires_delta=timedelta(seconds=current_app.config["OWNER_TOKEN_TTL"]),
    )


def verify(token: str | None, role: str) -> dict:
    """The claims of a valid, unexpired token of `role`; raise `InvalidToken` otherwise."""
    if not token:
        raise InvalidToken("missing token")
    config = current_app.config
    try:
        claims = jwt.decode(
            token,
            config["JWT_SECRET_KEY"],
            algorithms=config["JWT_DECODE_ALGORITHMS"],
            leeway=config["JWT_DECODE_LEEWAY"],
            options={"require": ["exp", "iat", "sub"]},
        )
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise InvalidToken(type(exc).__name__) from None
    # What flask-jwt-extended's create_access_token writes, and its decode_token checks.
    if claims.get("type") != "access":
        raise InvalidToken("not an access token")
    if claims.get("role") != role or not isinstance(claims.get("sub"), str):
        raise InvalidToken("wrong role")
    if not isinstance(claims.get("ver"), int) or isinstance(claims.get("ver"), bool):
        raise InvalidToken("no version")
    return claims


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
