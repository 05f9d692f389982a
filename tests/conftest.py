"""Shared fixtures: the app on a fresh database, its client and CLI runner, devices,
a live HTTP server, and real brokers.

Database tests run on SQLite, and on PostgreSQL too when TEST_DATABASE_URL is set.
`IOT_REQUIRE_SERVICES=1` (set by .ci/run) turns "skip: service unavailable" into a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

import pytest
from sqlalchemy import text
from werkzeug.serving import make_server

from iot_server import create_app
from iot_server.config import database_url
from iot_server.extensions import db, limiter
from iot_server.models import AGENT, MASTER, Device, Owner

ROOT = Path(__file__).resolve().parent.parent
MASTER_SECRET = "test-master-secret"
AGENT_SECRET = "test-agent-secret"
MQTT_SECRET = "test-mqtt-secret"
REQUIRE_SERVICES = os.environ.get("IOT_REQUIRE_SERVICES") == "1"


def service_unavailable(what: str) -> None:
    """Skip locally, fail in CI, when a service the test needs is not there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {what}")
    pytest.skip(f"service unavailable: {what}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def new_uuid() -> str:
    """A fresh lowercase device uuid."""
    return str(uuidlib.uuid4())


# ---------------------------------------------------------------- databases


def backends() -> list[str]:
    """SQLite always; PostgreSQL when TEST_DATABASE_URL names one."""
    return ["sqlite", "postgresql"] if os.environ.get("TEST_DATABASE_URL") else ["sqlite"]


@pytest.fixture(scope="session", params=backends())
def database(request, tmp_path_factory) -> str:
    """A migrated database URL for the session (migrations are what production runs)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite'}"
    else:
        url = database_url(os.environ["TEST_DATABASE_URL"])
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        try:
            db.session.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            service_unavailable(f"database {request.param}: {exc}")
        db.drop_all()
        db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        from flask_migrate import upgrade

        upgrade(directory=str(ROOT / "migrations"))
        db.engine.dispose()
    return url


def clear_tables() -> None:
    """Empty every table, children first."""
    db.session.rollback()
    db.session.execute(Device.__table__.update().values(master_uuid=None))
    db.session.execute(Device.__table__.delete())
    db.session.execute(Owner.__table__.delete())
    db.session.commit()


def test_config(database: str, **overrides) -> dict:
    """The mapping tests give `create_app` (over TestingConfig)."""
    return {"SQLALCHEMY_DATABASE_URI": database, **overrides}


@pytest.fixture
def app_config(database) -> dict:
    """Override point: a test module may extend this mapping (e.g. rate limits)."""
    return test_config(database)


@pytest.fixture
def app(app_config):
    """A fresh app on an emptied database."""
    app = create_app(app_config)
    with app.app_context():
        clear_tables()
        limiter.reset()
    yield app
    with app.app_context():
        db.session.remove()
        clear_tables()
        db.engine.dispose()


@pytest.fixture
def client(app):
    """The app's test client."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """The app's CLI runner."""
    return app.test_cli_runner()


# ---------------------------------------------------------------- domain helpers


class Devices:
    """Creates owners and devices directly in the database, and tokens through the API."""

    def __init__(self, app, client):
        self.app = app
        self.client = client

    def owner(self, username: str = "alice", password: str = "correct horse battery") -> int:
        """An owner account; returns its id."""
        from iot_server import owners

        with self.app.app_context():
            return owners.create(username, password).id

    def master(self, registered: bool = True, owner: str = "alice") -> str:
        """A master (claimed by `owner` when registered); returns its uuid."""
        uuid = new_uuid()
        with self.app.app_context():
            owner_id = None
            if registered:
                found = db.session.execute(db.select(Owner).filter_by(username=owner)).scalar()
                owner_id = found.id if found else Owner(username=owner, password_hash="x")
                if isinstance(owner_id, Owner):
                    db.session.add(owner_id)
                    db.session.flush()
                    owner_id = owner_id.id
            db.session.add(Device(uuid=uuid, kind=MASTER, owner_id=owner_id))
            db.session.commit()
        return uuid

    def agent(self, master: str | None = None) -> str:
        """An agent, linked to `master` when given; returns its uuid."""
        uuid = new_uuid()
        with self.app.app_context():
            db.session.add(Device(uuid=uuid, kind=AGENT, master_uuid=master))
            db.session.commit()
        return uuid

    def token(self, uuid: str) -> str:
        """A device token at the device's current version (as registration would issue)."""
        from iot_server import tokens

        with self.app.app_context():
            return tokens.issue_device_token(db.session.get(Device, uuid))

    def get(self, uuid: str) -> Device:
        """A detached snapshot of the device row."""
        with self.app.app_context():
            device = db.session.get(Device, uuid)
            db.session.expunge(device)
            return device


@pytest.fixture
def devices(app, client) -> Devices:
    """Factory for owners, devices and their tokens."""
    return Devices(app, client)


# ---------------------------------------------------------------- live servers


class LiveServer:
    """The app served over real HTTP in a thread (werkzeug, threaded)."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def live_server(app):
    """The app on a free port over real HTTP."""
    server = LiveServer(app).start()
    yield server
    server.stop()


class BrokerProcess:
    """An amqtt broker subprocess wired to an API's go-auth hooks, on a free port."""

    def __init__(self, api_port: int, port: int | None = None):
        self.api_port = api_port
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> BrokerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iot_server.dev_broker", "--port", str(self.port),
             "--api-port", str(self.api_port)],
            cwd=ROOT,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def amqtt_broker(live_server):
    """amqtt on a free port, authenticating every client through the live app's hooks."""
    broker = BrokerProcess(live_server.port).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto_port() -> int:
    """The machine's Mosquitto (anonymous, 127.0.0.1:1883)."""
    port = int(os.environ.get("TEST_MOSQUITTO_PORT", "1883"))
    try:
        wait_for_port(port, timeout=2)
    except TimeoutError:
        service_unavailable(f"mosquitto on 127.0.0.1:{port}")
    return port


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis, for the limiter's shared storage."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001
        service_unavailable(f"redis at {url}: {exc}")
    return url
