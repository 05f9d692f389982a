"""Shared fixtures: the app on a fresh database, its client and CLI runner, devices,
a live HTTP server, and real brokers.

Database tests run on SQLite, and on PostgreSQL too when TEST_DATABASE_URL is set.
`IOT_REQUIRE_SERVICES=1` (set by .ci/run) turns "skip: service unavailable" into a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text
from werkzeug.serving import make_server

from iot_server import create_app
from iot_server.config import LOOPBACK_NETWORKS, database_url
from iot_server.extensions import db, limiter
from iot_server.models import AGENT, MASTER, ConsoleSession, Device, DeviceSession, Owner

ROOT = Path(__file__).resolve().parent.parent
MASTER_SECRET = "test-master-secret-0123456789abcdefghij"
AGENT_SECRET = "test-agent-secret-0123456789abcdefghij"
MQTT_SECRET = "test-mqtt-secret-0123456789abcdefghijkl"
REQUIRE_SERVICES = os.environ.get("IOT_REQUIRE_SERVICES") == "1"


def service_unavailable(what: str) -> None:
    """Skip locally, fail in CI, when a service the test needs is not there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {what}")
    pytest.skip(f"service unavailable: {what}")


def _ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port() -> int:
    """A TCP port nobody uses right now, outside the ephemeral range: a port the kernel
    hands out itself may be taken by any outgoing connection (ours, or another test
    process's) between this call and the server's bind."""
    ephemeral = _ephemeral_ports()
    for _ in range(200):
        port = random.randrange(10_000, ephemeral.start)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


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


def wait_until(predicate, timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll until `predicate()` is true; its last answer once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def seconds_until(predicate, timeout: float, step: float = 0.05) -> float:
    """How long `predicate()` took to become true (AssertionError after `timeout`)."""
    started = time.monotonic()
    if not wait_until(predicate, timeout, step):
        raise AssertionError(f"still not true after {timeout} s")
    return time.monotonic() - started


def new_uuid() -> str:
    """A fresh lowercase device uuid."""
    return str(uuidlib.uuid4())


def request_token(client, uuid, secret=MASTER_SECRET, ip: str | None = None):
    """A device's registration call (`GET /auth/devices/request`). Each uuid calls from an
    address of its own unless `ip` is given, so the /auth/* limit stays out of the way."""
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    query = f"?uuid={uuid}" if uuid is not None else ""
    if ip is None:
        digest = hashlib.sha256(str(uuid).encode()).digest()
        ip = f"10.{digest[0]}.{digest[1]}.{digest[2] % 250 + 1}"
    return client.get(
        "/auth/devices/request" + query, headers=headers, environ_base={"REMOTE_ADDR": ip}
    )


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
    db.session.execute(DeviceSession.__table__.delete())
    db.session.execute(Device.__table__.update().values(master_uuid=None))
    db.session.execute(Device.__table__.delete())
    db.session.execute(ConsoleSession.__table__.delete())
    db.session.execute(Owner.__table__.delete())
    db.session.commit()


def config_for(database: str, **overrides) -> dict:
    """The mapping tests give `create_app` (over TestingConfig)."""
    return {"SQLALCHEMY_DATABASE_URI": database, **overrides}


@pytest.fixture
def app_config(database) -> dict:
    """Override point: a test module may extend this mapping (e.g. rate limits)."""
    return config_for(database)


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

    def owner_token(self, username: str = "alice") -> str:
        """An owner token for `username`, creating the account directly when missing (no
        argon2 cost per test)."""
        from iot_server import tokens

        with self.app.app_context():
            owner = db.session.execute(db.select(Owner).filter_by(username=username)).scalar()
            if owner is None:
                owner = Owner(username=username, password_hash="x")
                db.session.add(owner)
                db.session.commit()
            return tokens.issue_owner_token(owner)

    def owner_headers(self, username: str = "alice") -> dict:
        """`Authorization` with an owner token for `username`."""
        return {"Authorization": f"Bearer {self.owner_token(username)}"}

    def token(self, uuid: str) -> str:
        """A device token at the device's current version (as registration would issue)."""
        from iot_server import tokens

        with self.app.app_context():
            return tokens.issue_device_token(db.session.get(Device, uuid))

    def sessions(self, uuid: str) -> dict[str, int]:
        """The device's remembered MQTT sessions: client id → token version."""
        with self.app.app_context():
            rows = db.session.execute(
                db.select(DeviceSession.client_id, DeviceSession.token_version).filter_by(
                    device_uuid=uuid
                )
            )
            return dict(rows.all())

    def remember_session(self, uuid: str, client_id: str, **fields) -> None:
        """Remember a session as the broker hooks do at login (at the device's current
        token version unless `token_version` is given)."""
        with self.app.app_context():
            version = db.session.get(Device, uuid).token_version
            fields.setdefault("token_version", version)
            db.session.add(DeviceSession(device_uuid=uuid, client_id=client_id, **fields))
            db.session.commit()

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
            [
                sys.executable,
                "-m",
                "iot_server.dev.broker",
                "--port",
                str(self.port),
                "--api-port",
                str(self.api_port),
            ],
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


class PrivateServer:
    """A server binary of one test, foreground on a free port, that the test may kill
    (SIGKILL: an abrupt outage, every connection reset) and start again on that port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        self.process = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class PrivateMosquitto(PrivateServer):
    """An anonymous Mosquitto (`mosquitto -p PORT`): nobody else's pinger answers on it."""

    def argv(self) -> list[str]:
        return ["mosquitto", "-p", str(self.port)]


class RedisServer(PrivateServer):
    """A `redis-server` without persistence."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"] + [
            "--save", "", "--appendonly", "no"
        ]  # fmt: skip

    def client(self):
        """A redis-py client of this server."""
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)

    def keys(self) -> list[bytes]:
        """Every key stored (the limiter's counters)."""
        with contextlib.closing(self.client()) as client:
            return client.keys("*")


class NginxProxy(PrivateServer):
    """Debian's nginx on a free port with `deploy/nginx.conf` (the compose file's public
    entry) in front of `upstream_port`, rendered as the nginx image renders it."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        # Its own folder, readable by nginx's unprivileged workers (pytest's tmp is 0700).
        self.dir = Path(tempfile.mkdtemp(prefix="iot-nginx-"))
        self.dir.chmod(0o755)
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        site = site.replace("${IOT_API_UPSTREAM}", f"127.0.0.1:{upstream_port}")
        site = site.replace("${IOT_PROXY_PORT}", f"127.0.0.1:{self.port}")
        (self.dir / "site.conf").write_text(site)
        temp = {name: self.dir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for folder in temp.values():
            folder.mkdir(mode=0o777)
            folder.chmod(0o777)
        (self.dir / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {self.dir}/site.conf;
}}
"""
        )

    def argv(self) -> list[str]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                "-e", str(self.dir / "error.log")]  # fmt: skip

    def stop(self) -> None:
        """Stop nginx (SIGQUIT would wait for the slow clients) and remove its folder."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def nginx_proxy():
    """Factory: `nginx_proxy(upstream_port)` starts nginx with deploy/nginx.conf in front of
    that port; every proxy is stopped after the test."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        service_unavailable("the nginx binary (apt-get install nginx)")
    proxies: list[NginxProxy] = []

    def start(upstream_port: int) -> NginxProxy:
        proxy = NginxProxy(upstream_port)
        proxies.append(proxy)
        return proxy.start()

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def private_mosquitto():
    """A Mosquitto of this test alone, on a free port."""
    if shutil.which("mosquitto") is None:
        service_unavailable("the mosquitto binary")
    broker = PrivateMosquitto().start()
    yield broker
    broker.kill()


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


# ---------------------------------------------------------------- fault injection


class TcpProxy:
    """A loopback TCP forwarder that can be cut and restored, to simulate an outage of
    the service behind it (PostgreSQL, a broker) without touching the real service."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        """Accept connections and forward them."""
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Close the listener and every forwarded connection: the service is 'down'."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in [listener, *sockets]:
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets.update((downstream, upstream))
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL database URL: TEST_DATABASE_URL, else `iot_server_test` on the
    machine's local server (created when missing)."""
    from sqlalchemy import create_engine

    if os.environ.get("TEST_DATABASE_URL"):
        url = database_url(os.environ["TEST_DATABASE_URL"])
    else:
        url = "postgresql+psycopg://postgres@127.0.0.1:5432/iot_server_test"
    server = create_engine(
        url.rsplit("/", 1)[0] + "/postgres",
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 2},
    )
    try:
        with server.connect() as connection:
            name = url.rsplit("/", 1)[1]
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        service_unavailable(f"postgresql at {url}: {exc}")
    finally:
        server.dispose()
    return url


# ---------------------------------------------------------------- MQTT devices


PING_PAYLOAD = '{"c":"PING"}'


class FakeDevice:
    """A device's MQTT session (paho): subscribes to its ping topic, records what arrives."""

    def __init__(
        self,
        port: int,
        uuid: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
    ):
        self.uuid = uuid or new_uuid()
        self.topic = f"device/{self.uuid}/ping"
        self.messages: queue.Queue[tuple[dict | None, mqtt.MQTTMessage]] = queue.Queue()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{self.uuid}"
        )
        if password is not None:
            self.client.username_pw_set(f"device_{self.uuid}", password)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(  # synchronous: a refused login fails here, loudly
            "127.0.0.1", port, keepalive=10
        )
        self.client.loop_start()
        assert self.subscribed.wait(10), "device could not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, message):
        try:
            body = json.loads(message.payload)
        except (ValueError, RecursionError):
            body = None
        self.messages.put((body, message))

    def send(self, payload: str | bytes, topic: str | None = None) -> None:
        self.client.publish(topic or self.topic, payload, qos=0).wait_for_publish(5)

    def from_server(self, timeout: float = 5.0) -> tuple[dict, mqtt.MQTTMessage]:
        """The next message the server sent (skipping the device's own echoes)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("nothing from the server")
            try:
                body, message = self.messages.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError("nothing from the server") from None
            if isinstance(body, dict) and body.get("src") == "server":
                return body, message

    def server_messages(self, during: float) -> list[tuple[float, dict]]:
        """Every server message in the next `during` seconds, with its arrival time."""
        found = []
        deadline = time.monotonic() + during
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                body, _ = self.messages.get(timeout=remaining)
            except queue.Empty:
                break
            if isinstance(body, dict) and body.get("src") == "server":
                found.append((time.monotonic(), body))
        return found

    def ping_until_pong(self, timeout: float = 10.0) -> dict:
        """PING every half second until the server answers (it may still be connecting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send(PING_PAYLOAD)
            try:
                return self.from_server(timeout=0.5)[0]
            except AssertionError:
                continue
        raise AssertionError("no PONG")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fake_devices():
    """Factory of device sessions, all closed at the end."""
    made: list[FakeDevice] = []

    def make(port: int, **kwargs) -> FakeDevice:
        device = FakeDevice(port, **kwargs)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


@pytest.fixture
def proxied_postgres(postgres_url):
    """An app whose PostgreSQL connection runs through a `TcpProxy` the test can cut.

    Yields `(app, proxy)`; the schema exists, and the engine and proxy are closed after.
    """
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    proxy = TcpProxy(url.port or 5432).start()
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": url.set(port=proxy.port).render_as_string(False),
            "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 2}},
        }
    )
    with app.app_context():
        db.create_all()
    yield app, proxy
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    proxy.stop()


# ---------------------------------------------------------------- pinger processes


def pinger_env(**overrides: str) -> dict[str, str]:
    """The environment of a `python -m iot_server.pinger` of a test (development mode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOT_", "MQTT_"))}
    env.update(IOT_ENV="development", MQTT_SECRET_KEY=MQTT_SECRET)
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def pinger_process(env: dict[str, str], *args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    """`python -m iot_server.pinger [args]` with text stderr piped (its logs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "iot_server.pinger", *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- gunicorn instances


@pytest.fixture(scope="session")
def server_database(postgres_url) -> str:
    """A migrated PostgreSQL database of its own for servers run as subprocesses.

    gunicorn instances and pinger processes share it; it is `<postgres db>_servers`, so the
    in-process `app` fixture (which empties its tables per test) never races them.
    """
    from sqlalchemy import create_engine

    url = f"{postgres_url}_servers"
    name = url.rsplit("/", 1)[1]
    server = create_engine(
        postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()
    migrate = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env={**server_env(url), "IOT_ENV": "production"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    return url


def server_env(database_url: str, **overrides: str) -> dict[str, str]:
    """Environment for a production-mode subprocess (gunicorn, pinger) on that database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOT_", "RATELIMIT_"))}
    env.update(
        DATABASE_URL=database_url,
        JWT_SECRET="test-jwt-secret-of-a-sensible-length-0123456789",  # as TestingConfig,
        DEVICE_MASTER_SECRET_KEY=MASTER_SECRET,
        DEVICE_AGENT_SECRET_KEY=AGENT_SECRET,
        MQTT_SECRET_KEY=MQTT_SECRET,
        LOG_FORMAT="json",
        # Production trusts no network by default; the tests' go-auth calls come from
        # loopback, as a go-auth broker on the same host would (pass "" for the default).
        HOOK_TRUSTED_NETWORKS=LOOPBACK_NETWORKS,
    )
    env.update(overrides)
    return env


class GunicornServer:
    """`gunicorn -c gunicorn.conf.py wsgi:app` as production runs it, on a free port.

    stdout (access log) and stderr (app and gunicorn logs) go to files under `log_dir`;
    `records()` parses their JSON lines.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, workers: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(log_dir / f"metrics-{self.port}")
        Path(self.env["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
        self.stdout_path = log_dir / f"gunicorn-{self.port}.out"
        self.stderr_path = log_dir / f"gunicorn-{self.port}.err"
        self.process: subprocess.Popen | None = None

    def start(self) -> GunicornServer:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
            )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"gunicorn did not start:\n{self.stderr_path.read_text()}") from exc
        return self

    def refusal(self, timeout: float = 30.0) -> tuple[int, str]:
        """Start it expecting a refusal: its exit status and what it wrote on stderr."""
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
            )
        try:
            status = self.process.wait(timeout=timeout)
        finally:
            self.stop()
        return status, self.stderr_path.read_text()

    def worker_pids(self) -> set[int]:
        """The arbiter's live children (to prove no worker was restarted)."""
        assert self.process is not None
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {int(child) for child in children}

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def records(self) -> list[dict]:
        """Every JSON log line either stream has written so far."""
        records = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records


@pytest.fixture
def start_gunicorn(server_database, tmp_path):
    """Factory: `start_gunicorn(workers=2, **env)` runs gunicorn on the servers' database.

    Every instance started is stopped after the test.
    """
    servers: list[GunicornServer] = []

    def start(workers: int = 2, **env: str) -> GunicornServer:
        server = GunicornServer(server_env(server_database, **env), tmp_path, workers)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
