"""Blueprint `mqtt`: tells a device with a valid token where the broker is."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from .. import devices, tokens
from ..errors import ApiError

bp = Blueprint("mqtt", __name__)


def current_device():
    """The registered, enabled device whose current-version token authorised this request."""
    try:
        claims = tokens.verify(
            tokens.bearer_token(request.headers.get("Authorization")), tokens.DEVICE
        )
    except tokens.InvalidToken:
        raise ApiError(403, "missing, invalid or expired device token") from None
    device = devices.get(claims["sub"])
    if (
        device is None
        or device.token_version != claims["ver"]
        or not device.enabled
        or not device.is_registered
    ):
        raise ApiError(403, "token revoked or device no longer registered")
    return device


@bp.get("")
def broker_address():
    """`{"c":"OK","ip":"host:port"}` for a device with a valid token."""
    current_device()
    return jsonify(c="OK", ip=current_app.config["MQTT_HOST"])
