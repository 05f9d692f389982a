"""`flask --app wsgi dev` as a new user runs it: a subprocess on free ports and its own SQLite
file, a device registered with the printed curl line and pinged through the embedded broker,
then SIGTERM and no process left behind."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, FakeDevice, free_port, service_unavailable

from iot_server.dev.stack import CTRL_C, TRY_IT

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
        banner = "\n".join(LineReader(stack.stdout).until(CTRL_C, 60))
        exported = dict(re.findall(r"^  export ([A-Z_]+)=(\S+)$", banner, re.MULTILINE))
        generated = re.search(r"^Generated secrets \(.*\): (.*)\.$", banner, re.MULTILINE)
        # Ours is used, the three unset ones are generated; all four are exported.
        assert set(generated.group(1).split(", ")) == set(SECRETS) - {"DEVICE_MASTER_SECRET_KEY"}
        assert set(exported) == {"DATABASE_URL", *SECRETS}
        assert exported["DEVICE_MASTER_SECRET_KEY"] == OUR_MASTER_SECRET
        assert exported["DATABASE_URL"] == database
        uuid = re.search(r"^  export API=\S+ MQTT_PORT=\d+ DEVICE=(\S+)$", banner, re.M).group(1)
        url = f"http://127.0.0.1:{api_port}/auth/devices/request?uuid={uuid}"

        admin_env = {**env, **exported, "IOT_ENV": "development"}
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
    logged = (tmp_path / "stack.log").read_text()
    assert "Traceback" not in logged
    # No alembic chatter at start ("setup plugin …", "Context impl …", "Running upgrade …").
    assert "alembic" not in logged and "setup plugin" not in logged, logged


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


# ---------------------------------------------------------------- walkthroughs, verbatim

README = ROOT / "README.md"
DEVICE_WALKTHROUGH = "## A device, end to end"
OWNER_WALKTHROUGH = "## An owner, end to end"
#: /auth/* allows 5 calls in 5 s per address (RATELIMIT_AUTH): each walkthrough stays under
#: it, as a person pasting one does, and the next starts once the window has passed.
AUTH_WINDOW = 5.5


def readme_shell_block(heading: str) -> str:
    """The exact text of the first ```sh block under `heading` in README.md."""
    text = README.read_text()
    section = text[text.index(heading + "\n") :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("\n```", start) + 1]


def banner_commands(banner: list[str]) -> list[str]:
    """The banner's lines to paste, exactly as printed (indent included)."""
    return banner[banner.index(TRY_IT) + 1 : banner.index(CTRL_C)]


class WalkthroughStack:
    """`flask --app wsgi dev` on free ports with a fresh database and no secret set, and a
    bash that runs pasted text in a fresh shell of this folder."""

    def __init__(self, tmp_path: Path) -> None:
        self.api_port, self.mqtt_port = free_port(), free_port()
        self.log = (tmp_path / "stack.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "dev",
             "--port", str(self.api_port), "--mqtt-port", str(self.mqtt_port)],
            cwd=ROOT, env=clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite'}"),
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )  # fmt: skip
        self.banner = LineReader(self.process.stdout).until(CTRL_C, 60)
        self.commands = banner_commands(self.banner)
        self.exports = [line for line in self.commands if line.lstrip().startswith("export ")]
        self.last_run = 0.0

    def bash(self, script: str) -> subprocess.CompletedProcess:
        """Run `script` with bash in a fresh environment (none of our variables)."""
        time.sleep(max(0.0, self.last_run + AUTH_WINDOW - time.monotonic()))
        try:
            return subprocess.run(
                ["bash", "-c", script], cwd=ROOT, env=clean_env(), capture_output=True,
                text=True, timeout=120,
            )  # fmt: skip
        finally:
            self.last_run = time.monotonic()

    def stop(self) -> str:
        """SIGTERM, wait; the stack's stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return Path(self.log.name).read_text()


@pytest.fixture(scope="module")
def walkthrough_stack(tmp_path_factory):
    """One development stack for the walkthroughs of this module."""
    for tool in ("bash", "curl", "mosquitto_sub", "mosquitto_pub"):
        if shutil.which(tool) is None:
            service_unavailable(f"the {tool} command")
    stack = WalkthroughStack(tmp_path_factory.mktemp("walkthrough"))
    yield stack
    assert "Traceback" not in stack.stop()


def pong_lines(output: str, uuid: str) -> list[str]:
    """What mosquitto_sub -v printed for the device's ping topic."""
    return [line for line in output.splitlines() if line.startswith(f"device/{uuid}/ping ")]


def test_banner_commands_run_verbatim_and_the_subscriber_hears_the_pong(walkthrough_stack):
    """Every line after "Try it", pasted as printed into a shell with nothing set."""
    stack = walkthrough_stack
    assert [line for line in stack.commands if not line.startswith("  ")] == []
    uuid = re.search(r"DEVICE=(\S+)", "\n".join(stack.exports)).group(1)
    result = stack.bash("\n".join(stack.commands) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert pong_lines(result.stdout, uuid) == [
        f'device/{uuid}/ping {{"c":"PING"}}',
        f'device/{uuid}/ping {{"c":"PONG","src":"server"}}',
    ]


def test_readme_device_walkthrough_runs_verbatim(walkthrough_stack):
    """The README's device block after the banner's export lines, as the README says."""
    stack = walkthrough_stack
    block = readme_shell_block(DEVICE_WALKTHROUGH)
    result = stack.bash("\n".join(stack.exports) + "\n" + block)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    uuid = re.search(r"^DEVICE=(\S+)$", block, re.MULTILINE).group(1)
    lines = result.stdout.splitlines()
    assert lines[0] == '{"c":"NOT_REGISTERED","error":"device not yet claimed by an owner"}'
    assert lines[1:3] == ["created owner carol", f"{uuid} claimed by carol"]
    assert lines[3] == f'{{"c":"OK","ip":"127.0.0.1:{stack.mqtt_port}"}}'
    assert pong_lines(result.stdout, uuid) == [
        f'device/{uuid}/ping {{"c":"PING"}}',
        f'device/{uuid}/ping {{"c":"PONG","src":"server"}}',
    ]


def test_readme_owner_walkthrough_runs_verbatim(walkthrough_stack):
    """The README's owner block: every call answers OK, in order."""
    stack = walkthrough_stack
    result = stack.bash("\n".join(stack.exports) + "\n" + readme_shell_block(OWNER_WALKTHROUGH))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    # register, claim, link, two device tokens, the list, rename, revoke, unlink, release
    assert [answer["c"] for answer in answers] == ["OK"] * 10, answers
    listed = answers[5]["devices"]
    assert [(d["kind"], d["agents"] != []) for d in listed] == [("master", True), ("agent", False)]
