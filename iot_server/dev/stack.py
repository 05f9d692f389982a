"""`flask --app wsgi dev`: the whole system on one machine, for development.

Three child processes: the API (`flask run`), the embedded amqtt broker wired to the API's
go-auth hooks (`iot_server.dev.broker`) and the pinger (`iot_server.pinger`). The database
(`DATABASE_URL`, else the SQLite file of the instance folder) is migrated first; secrets come
from the environment, and any that is unset is generated and printed. The banner ends with
commands to paste into another shell (tests/dev/test_devstack.py runs them verbatim); with a
wildcard `--host` devices are told this machine's LAN address. Each child runs in its own
process group, so Ctrl-C reaches only this supervisor, which stops the three in order and
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
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
from ..database import MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
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


RFC1918 = [ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
#: Interfaces of containers and VMs on this machine: a board on the LAN cannot reach them.
VIRTUAL_INTERFACES = ("docker", "br-", "veth", "virbr", "vmnet", "vboxnet", "cni", "flannel")


def lan_address(adapters=None) -> str | None:
    """This machine's address on its local network, for devices on Wi-Fi: a private IPv4
    address (RFC 1918 first) of a physical interface first, then any non-loopback IPv4."""
    import ifaddr

    candidates = []
    for adapter in ifaddr.get_adapters() if adapters is None else adapters:
        virtual = adapter.name.startswith(VIRTUAL_INTERFACES)
        for ip in adapter.ips:
            if not ip.is_IPv4:
                continue
            address = ipaddress.IPv4Address(ip.ip)
            if address.is_loopback or address.is_link_local or address.is_unspecified:
                continue
            rfc1918 = any(address in network for network in RFC1918)
            candidates.append(((virtual, not rfc1918, not address.is_private), str(address)))
    return min(candidates)[1] if candidates else None


def device_address(host: str) -> str:
    """The address devices are given for servers bound to `host`: with a wildcard host,
    the machine's LAN address (else loopback, which a board cannot use)."""
    if host in WILDCARD_HOSTS:
        return lan_address() or "127.0.0.1"
    return host


def stack_environment(
    host: str, port: int, mqtt_port: int, environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The children's environment and the secrets generated for it (name → value)."""
    env = dict(environ)
    generated = {}
    for name in REQUIRED_SECRETS:
        if not env.get(name):
            generated[name] = env[name] = secrets.token_urlsafe(32)
    env.update(
        IOT_ENV="development",
        MQTT_BROKER_URL=f"mqtt://{local_address(host)}:{mqtt_port}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    if not env.get("MQTT_HOST"):
        env["MQTT_HOST"] = f"{device_address(host)}:{mqtt_port}"
    # The embedded broker calls the hooks from loopback without a header (amqtt cannot
    # send one): trust loopback unless the developer chose otherwise.
    if not env.get("HOOK_TRUSTED_NETWORKS"):
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
            # quiet: the banner says "(migrated)"; no line per migration before it.
            upgrade(directory=str(MIGRATIONS), x_arg=["quiet=1"])
        except click.ClickException as exc:  # migrations/env.py's one line, naming the fix
            raise StackError(exc.message) from None
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


#: The line after which the banner's commands start, and the one that ends them.
TRY_IT = "Try it: paste these lines into another shell in this folder, in order."
CTRL_C = "Ctrl-C stops everything."
TOKEN_OF_ANSWER = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"t\"])'"


def banner(
    host: str, port: int, mqtt_port: int, env: Mapping[str, str], generated: Mapping[str, str],
    database: str,
) -> list[str]:  # fmt: skip
    """What the developer needs: addresses, the settings of a board on the LAN, and
    commands that register a device and ping it, to paste as printed (no terminal needed)."""
    from sqlalchemy.engine import make_url

    q = shlex.quote
    address = device_address(host)
    api = f"http://{address}:{port}"
    device = str(uuidlib.uuid4())
    owner = f"owner-{device[:8]}"
    password = secrets.token_urlsafe(12)
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
        lines += [
            f"Generated secrets (new at every start): {', '.join(generated)}.",
            "  To keep them, run the export lines below before starting flask dev.",
        ]
    if address.startswith("127.") or address == "::1":
        lines.append(
            f"A board on Wi-Fi cannot reach {address} (its own address): start with"
            " --host 0.0.0.0 to get its settings."
        )
    else:
        lines += [
            "A board on this network (arduino/SMServer/README.md) takes:",
            f'  config.serverUrl = "{api}";',
            f'  config.uuid = "{device}";',
            f'  config.registrationSecret = "{env["DEVICE_MASTER_SECRET_KEY"]}";',
        ]
    lines.append(TRY_IT)
    # The same database and secrets as the stack, whatever the other shell has.
    lines += [f"  export {name}={q(env[name])}" for name in ("DATABASE_URL", *REQUIRED_SECRETS)]
    lines += [
        f"  export API={q(api)} MQTT_PORT={mqtt_port} DEVICE={device}",
        f"  printf '%s\\n' {q(password)} | flask --app wsgi users create {owner} --password-stdin",
        f'  flask --app wsgi devices claim "$DEVICE" --owner {owner}',
        '  DEVICE_TOKEN=$(curl -s "$API/auth/devices/request?uuid=$DEVICE"'
        f' -H "Authorization: Bearer $DEVICE_MASTER_SECRET_KEY" | {TOKEN_OF_ANSWER})',
        f'  mosquitto_sub -h {address} -p "$MQTT_PORT" -u "device_$DEVICE" -P "$DEVICE_TOKEN"'
        ' -i "$DEVICE-sub" -t "device/$DEVICE/ping" -C 2 -W 20 -v &',
        "  sleep 1",
        f'  mosquitto_pub -h {address} -p "$MQTT_PORT" -u "device_$DEVICE" -P "$DEVICE_TOKEN"'
        ' -i "$DEVICE-pub" -t "device/$DEVICE/ping" -m \'{"c":"PING"}\'',
        "  wait",
        f'  # device/{device}/ping {{"c":"PING"}} then device/{device}/ping'
        ' {"c":"PONG","src":"server"}',
        CTRL_C,
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
