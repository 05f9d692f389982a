"""`flask --app wsgi dev` as a new user runs it: a subprocess on free ports and its own SQLite
file, a device registered with the printed curl line and pinged through the embedded broker,
then SIGTERM and no process left behind."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, FakeDevice, free_port

pytestmark = pytest.mark.slow

SECRETS = ("JWT_SECRET", "DEVICE_MASTER_SECRET_KEY", "DEVICE_AGENT_SECRET_KEY", "MQTT_SECRET_KEY")
OUR_MASTER_SECRET = "a-master-secret-chosen-by-the-developer"


def clean_env(**extra) -> dict:
    """The environment of a fresh shell: none of our variables set."""
    ours = (*SECRETS, "IOT_ENV", "DATABASE_URL", "MQTT_HOST", "MQTT_BROKER_URL")
    ours += ("HOOK_TRUSTED_NETWORKS",)
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(extra)
    return env


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class LineReader:
    """Collects a pipe's lines in a thread, so reading never blocks the test."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def until(self, marker: str, timeout: float) -> list[str]:
        """Lines up to and including the first containing `marker`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if marker in line:
                return self.seen
        raise AssertionError(f"{marker!r} never printed; got: {self.seen}")


def flask(*args: str, env: dict, input: str | None = None) -> subprocess.CompletedProcess:
    """A management command, as the banner tells the developer to run it."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_stack_end_to_end(tmp_path):
    api_port, mqtt_port = free_port(), free_port()
    database = f"sqlite:///{tmp_path / 'dev.sqlite'}"
    env = clean_env(DATABASE_URL=database, DEVICE_MASTER_SECRET_KEY=OUR_MASTER_SECRET)
    log = (tmp_path / "stack.log").open("w")
    stack = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "dev",
         "--port", str(api_port), "--mqtt-port", str(mqtt_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    device = None
    try:
        banner = "\n".join(LineReader(stack.stdout).until("Ctrl-C stops everything", 60))
        generated = dict(re.findall(r"^\s+([A-Z_]+)=(\S+)$", banner, re.MULTILINE))
        # Ours is used, the three unset ones are generated and printed.
        assert set(generated) == set(SECRETS) - {"DEVICE_MASTER_SECRET_KEY"}
        assert OUR_MASTER_SECRET in banner
        uuid = re.search(r"devices claim (\S+) --owner alice", banner).group(1)
        url = re.search(r"curl .* '(http://\S+)'", banner).group(1)
        assert url == f"http://127.0.0.1:{api_port}/auth/devices/request?uuid={uuid}"

        admin_env = {**env, **generated, "IOT_ENV": "development"}
        created = flask("users", "create", "alice", "--password-stdin", env=admin_env,
                        input="a long enough password\n")  # fmt: skip
        assert created.returncode == 0, created.stderr
        claimed = flask("devices", "claim", uuid, "--owner", "alice", env=admin_env)
        assert claimed.returncode == 0, claimed.stderr

        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {OUR_MASTER_SECRET}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.load(response)["t"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/mqtt", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response) == {"c": "OK", "ip": f"127.0.0.1:{mqtt_port}"}

        device = FakeDevice(mqtt_port, uuid=uuid, password=token)
        assert device.ping_until_pong(timeout=20) == {"c": "PONG", "src": "server"}

        children = descendants(stack.pid)
        assert len(children) >= 3  # API, broker, pinger
        device.close()
        device = None
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=30) == 0
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if alive(pid)] == []
    finally:
        if device is not None:
            device.close()
        if stack.poll() is None:
            stack.kill()
            stack.wait()
        log.close()
    assert "Traceback" not in (tmp_path / "stack.log").read_text()


@pytest.mark.parametrize("taken", ["--port", "--mqtt-port"])
def test_taken_port_is_one_line_naming_the_option(tmp_path, taken):
    ports = {"--port": free_port(), "--mqtt-port": free_port()}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[taken]))
        squatter.listen()
        result = flask(
            "dev", "--port", str(ports["--port"]), "--mqtt-port", str(ports["--mqtt-port"]),
            env=clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite'}"),
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {ports[taken]} is in use" in lines[0]
    assert f"pass {taken}" in lines[0]


def test_dev_stack_trusts_loopback_hook_callers_only_when_unset():
    """Production trusts no network by default; `flask dev`'s amqtt calls from loopback."""
    from iot_server.config import LOOPBACK_NETWORKS
    from iot_server.dev.stack import stack_environment

    env, _ = stack_environment("127.0.0.1", 5000, 1883, clean_env())
    assert env["HOOK_TRUSTED_NETWORKS"] == LOOPBACK_NETWORKS
    env, _ = stack_environment("127.0.0.1", 5000, 1883, clean_env(HOOK_TRUSTED_NETWORKS="::1"))
    assert env["HOOK_TRUSTED_NETWORKS"] == "::1"
