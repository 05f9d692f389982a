"""`flask --app wsgi dev`: the whole system on one machine, for development.

Three child processes: the API (`flask run`), the embedded amqtt broker wired to the API's
go-auth hooks (`iot_server.dev.broker`) and the pinger (`iot_server.pinger`). The database
(`DATABASE_URL`, else the SQLite file of the instance folder) is migrated first; secrets come
from the environment, and any that is unset is generated and printed. Each child runs in its
own process group, so Ctrl-C reaches only this supervisor, which stops the three in order
and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path

import click

from ..config import LOOPBACK_NETWORKS, REQUIRED_SECRETS, DevelopmentConfig, database_url

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
STOP_TIMEOUT = 10.0
START_TIMEOUT = 30.0


class StackError(Exception):
    """A one-line reason the stack cannot start (shown by the CLI as `Error: …`)."""


def port_taken(host: str, port: int) -> OSError | None:
    """The bind error when something listens on the port, else None (nothing connects, so
    the servers log no half-open client)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # The servers set SO_REUSEADDR too, so TIME_WAIT leftovers are no false alarm.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_port_free(host: str, port: int, option: str) -> None:
    """Fail with one line naming the option when something already listens on the port."""
    error = port_taken(host, port)
    if error is not None:
        raise StackError(f"port {port} is in use ({error.strerror}): pass {option}")


def local_address(host: str) -> str:
    """The address to reach a server bound to `host` from this machine."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def stack_environment(
    host: str, port: int, mqtt_port: int, environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The children's environment and the secrets generated for it (name → value)."""
    env = dict(environ)
    generated = {}
    for name in REQUIRED_SECRETS:
        if not env.get(name):
            generated[name] = env[name] = secrets.token_urlsafe(32)
    broker = f"{local_address(host)}:{mqtt_port}"
    env.update(
        IOT_ENV="development",
        MQTT_BROKER_URL=f"mqtt://{broker}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    if not env.get("MQTT_HOST"):
        env["MQTT_HOST"] = broker
    if not env.get("HOOK_TRUSTED_NETWORKS"):
        # The embedded amqtt broker calls the hooks from loopback and cannot send the secret.
        env["HOOK_TRUSTED_NETWORKS"] = LOOPBACK_NETWORKS
    # amqtt has no shared subscriptions: `$share/…` would be a literal topic there.
    env.pop("MQTT_SHARED_GROUP", None)
    return env, generated


def migrate(url: str | None) -> str:
    """Bring the database to the latest migration; returns the URL actually used."""
    from flask_migrate import upgrade

    from .. import create_app
    from ..extensions import db

    config = DevelopmentConfig()
    config.SQLALCHEMY_DATABASE_URI = database_url(url)
    app = create_app(config)
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    with app.app_context():
        try:
            upgrade(directory=str(MIGRATIONS))
        except Exception as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StackError(f"cannot migrate the database: {reason}") from None
        finally:
            db.engine.dispose()
    return url


def die_with_parent() -> None:
    """In the child, before exec: Linux sends SIGTERM if the supervisor dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so no child outlives it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def wait_for_port(host: str, port: int, process: subprocess.Popen, name: str) -> None:
    """Block until the child accepts connections; fail if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"the {name} exited during startup (status {process.returncode})")
        if port_taken(host, port) is not None:
            return
        time.sleep(0.1)
    raise StackError(f"the {name} did not listen on {host}:{port} within {START_TIMEOUT:.0f}s")


class DevStack:
    """The three children and their orderly start and stop."""

    def __init__(self, host: str, port: int, mqtt_port: int, env: dict[str, str]) -> None:
        self.host, self.port, self.mqtt_port, self.env = host, port, mqtt_port, env
        self.children: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start a child in its own process group (Ctrl-C goes to this supervisor only)."""
        process = subprocess.Popen(
            [sys.executable, *args],
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.children.append((name, process))
        return process

    def start(self) -> None:
        """API first (the broker's hooks need it), then the broker, then the pinger."""
        address = local_address(self.host)
        api = self.spawn(
            "API",
            ["-m", "flask", "--app", "iot_server", "run", "--host", self.host,
             "--port", str(self.port), "--no-reload", "--no-debugger"],
        )  # fmt: skip
        wait_for_port(self.host, self.port, api, "API")
        broker = self.spawn(
            "broker",
            ["-m", "iot_server.dev.broker", "--host", self.host, "--port", str(self.mqtt_port),
             "--api-host", address, "--api-port", str(self.port)],
        )  # fmt: skip
        wait_for_port(self.host, self.mqtt_port, broker, "broker")
        self.spawn("pinger", ["-m", "iot_server.pinger"])

    def exited(self) -> tuple[str, int] | None:
        """The first child that has exited, with its status."""
        for name, process in self.children:
            if process.poll() is not None:
                return name, process.returncode
        return None

    def stop(self) -> None:
        """SIGTERM every group (pinger first: it flushes), wait, then SIGKILL stragglers."""
        for _, process in reversed(self.children):
            signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, process in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _, process in self.children:
            # Also reaps grandchildren left in the group by a child that did exit.
            signal_group(process, signal.SIGKILL)
            process.wait()


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the child's whole process group; it may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def banner(
    host: str, port: int, mqtt_port: int, env: Mapping[str, str], generated: Mapping[str, str],
    database: str,
) -> list[str]:  # fmt: skip
    """What the developer needs: addresses, generated secrets, how to register a device."""
    from sqlalchemy.engine import make_url

    address = local_address(host)
    api = f"http://{address}:{port}"
    device = str(uuidlib.uuid4())
    master_secret = env["DEVICE_MASTER_SECRET_KEY"]
    lines = [
        "iot_server development stack",
        f"  database  {make_url(database).render_as_string(hide_password=True)} (migrated)",
        f"  API       {api}",
        f"  console   {api}/console (create an account, claim and watch devices)",
        f"  broker    mqtt://{address}:{mqtt_port} (amqtt, logins checked by the API's hooks)",
        f"  devices   are told MQTT_HOST={env['MQTT_HOST']}",
        f"  pinger    connects as {env.get('MQTT_SERVICE_USERNAME') or 'iot-server'}",
    ]
    if generated:
        lines.append("Generated secrets (export them to keep them across restarts):")
        lines += [f"  {name}={value}" for name, value in generated.items()]
    lines += [
        "Register a device: an owner claims it, then the device asks for its token:",
        "  flask --app wsgi users create alice",
        f"  flask --app wsgi devices claim {device} --owner alice",
        f"  curl -H {shlex.quote('Authorization: Bearer ' + master_secret)}"
        f" {shlex.quote(f'{api}/auth/devices/request?uuid={device}')}",
        'Then ping as the device (TOKEN = the curl answer\'s "t"):',
        f'  mosquitto_sub -h {address} -p {mqtt_port} -u device_{device} -P "$TOKEN"'
        f" -t device/{device}/ping -v &",
        f'  mosquitto_pub -h {address} -p {mqtt_port} -u device_{device} -P "$TOKEN"'
        f' -t device/{device}/ping -m \'{{"c":"PING"}}\'',
        "Ctrl-C stops everything.",
    ]
    return lines


def run(
    host: str = "127.0.0.1",
    port: int = 5000,
    mqtt_port: int = 1883,
    environ: Mapping[str, str] | None = None,
    echo: Callable[[str], None] = click.echo,
) -> int:
    """Run the stack until Ctrl-C or SIGTERM; returns the exit status. Raises StackError."""
    environ = os.environ if environ is None else environ
    check_port_free(host, port, "--port")
    check_port_free(host, mqtt_port, "--mqtt-port")
    env, generated = stack_environment(host, port, mqtt_port, environ)
    env["DATABASE_URL"] = migrate(env.get("DATABASE_URL"))

    stopping: list[int] = []

    def request_stop(signum, frame) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = DevStack(host, port, mqtt_port, env)
    try:
        stack.start()
        for line in banner(host, port, mqtt_port, env, generated, env["DATABASE_URL"]):
            echo(line)
        while not stopping:
            failed = stack.exited()
            if failed:
                name, status = failed
                raise StackError(f"the {name} exited unexpectedly (status {status}); stopped")
            time.sleep(0.2)
        echo("stopping…")
        return 0
    finally:
        stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
