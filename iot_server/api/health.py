"""Blueprint `health`: liveness, readiness and Prometheus metrics (no rate limits)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from .. import metrics
from ..errors import error_response, is_stale_connection
from ..extensions import db, exempt_from_rate_limits

bp = Blueprint("health", __name__)
exempt_from_rate_limits(bp)
log = logging.getLogger("iot_server.health")


@bp.get("/healthz")
def healthz():
    """The process is up; touches nothing else."""
    return jsonify(c="OK")


@bp.get("/readyz")
def readyz():
    """Ready when the database answers (asked twice when a pooled connection was stale)."""
    for attempt in (1, 2):
        try:
            db.session.execute(text("SELECT 1"))
            return jsonify(c="OK")
        except Exception as exc:  # any failure to reach the database means "not ready"
            db.session.rollback()
            if attempt == 1 and is_stale_connection(exc):
                continue
            log.warning("database not ready: %s", type(exc).__name__)
    return error_response(503, "database unavailable")


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text format, summed over all workers."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
