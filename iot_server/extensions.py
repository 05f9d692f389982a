"""Flask extensions, created unbound here and bound in `create_app()`."""

import ipaddress

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
    """The rate-limit key: the client address after ProxyFix has applied TRUSTED_PROXIES,
    and for IPv6 its /64 (one subscriber's network: 120 addresses of one /64 passed a
    limit meant for one client)."""
    return rate_limit_key(request.remote_addr)


def rate_limit_key(address: str | None) -> str:
    """An IPv4 address as is; an IPv6 address as its /64 network (IPv4-mapped as IPv4)."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


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

    def init_app(self, app) -> None:
        """flask-limiter's, with its per-response header work skipped for unlimited
        blueprints as well (it registers a partial of itself as an after_request)."""
        super().init_app(app)
        handlers = app.after_request_funcs.setdefault(None, [])
        for index, handler in enumerate(handlers):
            if getattr(handler, "args", ())[:1] == (self,):
                handlers[index] = _unless_unlimited(handler)


def _unless_unlimited(after_request):
    """`after_request`, skipped for requests no limit applies to."""

    def limited_only(response):
        if request.blueprint in UNLIMITED_BLUEPRINTS:
            return response
        return after_request(response)

    return limited_only


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
