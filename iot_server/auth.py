"""Blueprint `auth`: device registration (seed-compatible). One rate-limit bucket per IP."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request

from . import devices, tokens
from .errors import ApiError
from .extensions import limiter
from .identifiers import parse_uuid
from .metrics import REGISTRATIONS

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
        uuid = parse_uuid(request.args.get("uuid"))
        if uuid is None:
            raise ApiError(400, "uuid must be a hyphenated 8-4-4-4-12 hex uuid")
        device, _ = devices.get_or_create(uuid, kind)
        devices.check_can_have_token(device, kind)
    except ApiError as exc:
        REGISTRATIONS.labels(exc.code).inc()
        log.info("token refused: %s", exc.code, extra={"device": request.args.get("uuid", "")[:64]})
        raise
    REGISTRATIONS.labels("OK").inc()
    log.info("token issued", extra={"device": uuid})
    return jsonify(c="OK", t=tokens.issue_device_token(device))
