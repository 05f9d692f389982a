"""Flask extensions, created unbound here and bound in `create_app()`."""

import flask_limiter
from flask import current_app, request
from flask_jwt_extended import JWTManager
from flask_limiter import Limit
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base for every model in `models.py`."""


def client_ip() -> str:
    """The rate-limit key: the client address after ProxyFix has applied TRUSTED_PROXIES."""
    return request.remote_addr or "unknown"


def default_rate_limit() -> str:
    """`RATELIMIT_DEFAULT`, read per request so every app uses its own config."""
    return current_app.config["RATELIMIT_DEFAULT"]


#: Blueprints no rate limit applies to (SPEC.md: the broker hooks and health), by name.
UNLIMITED_BLUEPRINTS: set[str] = set()


def exempt_from_rate_limits(blueprint):
    """Mark a blueprint as never rate limited (call at its definition, like a decorator)."""
    UNLIMITED_BLUEPRINTS.add(blueprint.name)
    return blueprint


class Limiter(flask_limiter.Limiter):
    """flask-limiter, skipping its per-request check outright for unlimited blueprints.

    Its own exemption handling still resolves every limit, exemption scope and meta limit
    of the request first, which costs more than the whole /healthz view: the broker hooks
    and the health probes, which have no limits, pay nothing for the limiter.
    """

    def _check_request_limit(self, callable_name=None, in_middleware=True) -> None:
        if in_middleware and request.blueprint in UNLIMITED_BLUEPRINTS:
            return
        super()._check_request_limit(callable_name, in_middleware)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
jwt = JWTManager()
limiter = Limiter(
    key_func=client_ip,
    # One bucket per client IP shared by every route without a limit of its own (SPEC.md).
    default_limits=[Limit(default_rate_limit, shared=True, scope="default")],
    headers_enabled=True,
    # Limiter storage (Redis) down: serve on per-process counters and log it, never fail.
    swallow_errors=True,
    in_memory_fallback_enabled=True,
)
