"""Blueprint `auth`: device registration (seed-compatible) and owner accounts.

One rate-limit bucket per client IP covers every route here, so login attempts are limited.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, current_app, jsonify, request

from .. import devices, owners, tokens
from ..errors import ApiError
from ..extensions import limiter
from ..identifiers import USERNAME_FORM, USERNAME_PATTERN
from ..metrics import REGISTRATIONS
from . import validation
from .access import require_token
from .validation import Text

bp = Blueprint("auth", __name__)
log = logging.getLogger("iot_server.auth")
# One bucket per client IP shared by every /auth/* route (SPEC.md, "Rate limits").
limiter.shared_limit(lambda: current_app.config["RATELIMIT_AUTH"], scope="auth")(bp)


@bp.get("/devices/request")
def request_device_token():
    """Hand a registered device its token; the secret decides the kind of a new device."""
    try:
        kind = devices.kind_for_secret(tokens.bearer_token(request.headers.get("Authorization")))
        # The secret is checked before the uuid: a bad secret learns nothing about uuids.
        if kind is None:
            raise ApiError(403, "missing or wrong registration secret")
        uuid = validation.require_uuid(request.args.get("uuid"))
        device, _ = devices.get_or_create(uuid, kind)
        devices.check_can_have_token(device, kind)
    except ApiError as exc:
        REGISTRATIONS.labels(exc.code).inc()
        log.info("token refused: %s", exc.code, extra={"device": request.args.get("uuid", "")[:64]})
        raise
    REGISTRATIONS.labels("OK").inc()
    log.info("token issued", extra={"device": uuid})
    return jsonify(c="OK", t=tokens.issue_device_token(device))


REGISTER_FIELDS = {
    "username": Text(pattern=re.compile(USERNAME_PATTERN, re.ASCII), form=USERNAME_FORM),
    "password": Text(min_length=owners.PASSWORD_MIN, max_length=owners.PASSWORD_MAX),
}
# Login checks types only: a username or password of the wrong form is just wrong (403).
LOGIN_FIELDS = {"username": Text(), "password": Text()}
PASSWORD_FIELDS = {
    "password": Text(),
    "new_password": Text(min_length=owners.PASSWORD_MIN, max_length=owners.PASSWORD_MAX),
}


@bp.post("/users/register")
def register_owner():
    """Create an owner account: 201, or 409 when the username is taken."""
    data = validation.body(REGISTER_FIELDS)
    owner = owners.create(data["username"], data["password"])
    log.info("owner registered", extra={"owner": owner.username})
    return jsonify(c="OK"), 201


@bp.post("/users/login")
def login_owner():
    """An owner token for matching credentials; the same 403 whether or not the user exists."""
    data = validation.body(LOGIN_FIELDS)
    try:
        owner = owners.login(data["username"], data["password"])
    except ApiError as exc:
        log.info("owner login refused: %s", exc.error)
        raise
    log.info("owner logged in", extra={"owner": owner.username})
    return jsonify(c="OK", t=tokens.issue_owner_token(owner))


@bp.post("/users/logout")
def logout_owner():
    """End the presented token, and with it every other token of the owner (logout-all)."""
    owner = require_token(tokens.OWNER)
    owners.revoke_tokens(owner)
    log.info("owner logged out", extra={"owner": owner.username})
    return jsonify(c="OK")


@bp.post("/users/password")
def change_owner_password():
    """Change the password (the current one is checked): every earlier token ends, and the
    answer carries a new one."""
    owner = require_token(tokens.OWNER)
    data = validation.body(PASSWORD_FIELDS)
    owners.change_password(owner, data["password"], data["new_password"])
    log.info("owner password changed", extra={"owner": owner.username})
    return jsonify(c="OK", t=tokens.issue_owner_token(owner))
