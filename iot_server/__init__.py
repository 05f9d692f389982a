"""iot_server: registers IoT devices, hands them tokens and answers their MQTT broker."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Config, TestingConfig, config_for_env


class IotServer(Flask):
    """Flask, remembering which request hooks and views are coroutines.

    Flask asks `inspect` about every hook function (before, after, teardown: a dozen here)
    at every request; with nothing else to do, a broker hook spent about 6 % of its time
    there. The answer never changes for a function, so it is kept.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: dict = {}

    def ensure_sync(self, func):
        try:
            return self._sync_functions[func]
        except KeyError:
            sync = self._sync_functions[func] = super().ensure_sync(func)
            return sync
        except TypeError:  # an unhashable callable: ask Flask every time
            return super().ensure_sync(func)


def create_app(config: Config | Mapping | None = None) -> Flask:
    """Build the app: `None` reads the environment (IOT_ENV picks the class), a `Config`
    instance is used as is, and a mapping (tests) is applied over `TestingConfig`."""
    app = IotServer(__name__, instance_relative_config=True, static_folder=None)
    app.json.sort_keys = False
    if config is None:
        config = config_for_env()
    if isinstance(config, Mapping):
        app.config.from_object(TestingConfig())
        app.config.update(config)
    else:
        app.config.from_object(config)
    configure_derived(app)

    from . import broker, cli, console, errors, extensions, logs, metrics

    logs.init_app(app)
    extensions.db.init_app(app)
    extensions.migrate.init_app(app, extensions.db, render_as_batch=True)
    extensions.jwt.init_app(app)
    extensions.limiter.init_app(app)
    metrics.init_app(app)
    broker.init_app(app)
    console.init_app(app)
    errors.init_app(app)
    cli.init_app(app)
    register_blueprints(app)

    if app.config["TRUSTED_PROXIES"] > 0:
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    return app


def configure_derived(app: Flask) -> None:
    """Settings computed from others: the database default and pool, the JWT options."""
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        os.makedirs(app.instance_path, exist_ok=True)
        path = os.path.join(app.instance_path, "iot_server.sqlite")
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_size": app.config["DATABASE_POOL_SIZE"],
            "max_overflow": app.config["DATABASE_MAX_OVERFLOW"],
            **app.config["SQLALCHEMY_ENGINE_OPTIONS"],
        }
    master, agent = app.config["DEVICE_MASTER_SECRET_KEY"], app.config["DEVICE_AGENT_SECRET_KEY"]
    if master and master == agent:
        # The secret decides a device's kind: equal secrets would make that ambiguous.
        raise RuntimeError("DEVICE_MASTER_SECRET_KEY and DEVICE_AGENT_SECRET_KEY must differ")
    if not app.config.get("SECRET_KEY") and app.config["JWT_SECRET"]:
        # Flask signs the console's session cookie with SECRET_KEY. Derived from JWT_SECRET
        # under a label of its own: no new secret to deploy, a key that signs no token, and
        # rotating JWT_SECRET ends console sessions as it ends owner tokens.
        app.config["SECRET_KEY"] = hmac.new(
            app.config["JWT_SECRET"].encode(), b"iot_server console session cookie", hashlib.sha256
        ).hexdigest()
    app.config.update(
        JWT_SECRET_KEY=app.config["JWT_SECRET"],
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],
        JWT_TOKEN_LOCATION=["headers"],
        # Clock skew between instances (and the machine that issued the token): an `iat`
        # a few seconds ahead was refused.
        JWT_DECODE_LEEWAY=app.config.get("JWT_DECODE_LEEWAY", 30),
    )


def register_blueprints(app: Flask) -> None:
    """The whole URL map in one place (each blueprint declares its own rate limit)."""
    from .api import auth, health, mqtt, openapi, owner_devices
    from .broker import emqx_hooks, mosquitto_hooks
    from .console import pages

    app.register_blueprint(auth.bp, url_prefix="/auth")
    app.register_blueprint(mqtt.bp, url_prefix="/mqtt")
    app.register_blueprint(owner_devices.bp, url_prefix="/devices")
    app.register_blueprint(openapi.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(emqx_hooks.bp)
    app.register_blueprint(mosquitto_hooks.bp, url_prefix="/mosquitto")
    app.register_blueprint(pages.bp, url_prefix="/console")
    app.add_url_rule("/", "front_page", pages.go_to_console)
