"""Blueprint `mqtt`: tells a device with a valid token where the broker is."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .. import tokens
from .access import require_token

bp = Blueprint("mqtt", __name__)


@bp.get("")
def broker_address():
    """`{"c":"OK","ip":"host:port"}` for a device with a valid token."""
    require_token(tokens.DEVICE)
    return jsonify(c="OK", ip=current_app.config["MQTT_HOST"])
