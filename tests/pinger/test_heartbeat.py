"""The pinger's own health signal: the heartbeat its loops refresh, and the check that reads it.

The check must follow the pinger: healthy while it runs (broker or not), unhealthy within two
intervals once its loop stops, whether the whole process is frozen (SIGSTOP) or one thread
hangs. Processes and threads here are real; only the intervals are shortened.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, pinger_env, wait_until
from test_pinger import RunningPinger

from iot_server.pinger.client import Pinger
from iot_server.pinger.health import check_heartbeat

pytestmark = pytest.mark.slow

#: What the image's HEALTHCHECK runs, and what compose's pinger service runs.
IMAGE_PROBE = [str(ROOT / "bin" / "healthcheck")]
COMPOSE_PROBE = [sys.executable, "-m", "iot_server.pinger", "--check-health"]


def beat(**fields) -> dict:
    """A heartbeat as the pinger writes it, fresh unless told otherwise."""
    now = time.time()
    return {
        "pid": 1,
        "at": now,
        "flushed_at": now,
        "flush_interval": 1.0,
        "connected": True,
        "since": now - 300,
        "devices": 12,
        "pending": 3,
        **fields,
    }


# ---------------------------------------------------------------- the check


def test_a_fresh_heartbeat_is_healthy_and_says_so(tmp_path):
    path = tmp_path / "heartbeat"
    path.write_text(json.dumps(beat()))
    healthy, line = check_heartbeat(str(path), max_age=10)
    assert healthy
    assert line.startswith("healthy: loop ")
    assert "broker connected for 5 min; 12 devices, 3 pending" in line
    assert "\n" not in line


def test_a_disconnected_pinger_is_still_healthy(tmp_path):
    """Healthy = the loops turn; the broker's state is reported, not judged."""
    path = tmp_path / "heartbeat"
    path.write_text(json.dumps(beat(connected=False, since=time.time() - 40)))
    healthy, line = check_heartbeat(str(path), max_age=10)
    assert healthy
    assert "broker disconnected, reconnecting for 40 s" in line


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"at": 1000.0}, "unhealthy: the pinger's loop last turned 20 s ago (limit 10 s)"),
        ({"flushed_at": 1000.0}, "unhealthy: the presence writer last turned 20 s ago"),
    ],
)
def test_a_stale_heartbeat_is_unhealthy(tmp_path, fields, expected):
    path = tmp_path / "heartbeat"
    path.write_text(json.dumps(beat(**{"at": 1019.0, "flushed_at": 1019.0, **fields})))
    healthy, line = check_heartbeat(str(path), max_age=10, now=1020.0)
    assert not healthy
    assert line.startswith(expected), line


@pytest.mark.parametrize(
    ("at", "flushed_at", "healthy"),
    [
        (1000.0, 1000.0, True),  # loop and presence writer 10 s ago: at the limit
        (999.0, 1000.0, False),  # loop: 11 s > 10 s
        (1000.0, 999.5, True),  # presence writer: 10.5 s <= 10 s + its 1 s interval
        (1000.0, 998.5, False),  # 11.5 s > 11 s
    ],
)
def test_the_limits(tmp_path, at, flushed_at, healthy):
    path = tmp_path / "heartbeat"
    path.write_text(json.dumps(beat(at=at, flushed_at=flushed_at)))
    assert check_heartbeat(str(path), max_age=10, now=1010.0)[0] is healthy


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no heartbeat at"),
        ("", "unreadable heartbeat"),
        ("{not json", "unreadable heartbeat"),
        ('{"at": 1}', "unreadable heartbeat"),
        ('["a list"]', "unreadable heartbeat"),
    ],
)
def test_no_usable_heartbeat_is_unhealthy(tmp_path, content, expected):
    path = tmp_path / "heartbeat"
    if content is not None:
        path.write_text(content)
    healthy, line = check_heartbeat(str(path), max_age=10)
    assert not healthy
    assert line.startswith("unhealthy: ") and expected in line


def test_no_heartbeat_file_configured_is_unhealthy():
    healthy, line = check_heartbeat(None, max_age=10)
    assert not healthy
    assert "PINGER_HEALTH_FILE is not set" in line


def test_the_command_prints_one_line_and_exits_0_or_1(tmp_path):
    """`python -m iot_server.pinger --check-health`: Docker reads exit 0 or 1 (2 is reserved)."""
    path = tmp_path / "heartbeat"
    env = {**pinger_env(), "PINGER_HEALTH_FILE": str(path), "PINGER_HEALTH_MAX_AGE": "5"}
    for content, code in [(None, 1), (json.dumps(beat()), 0), ("{", 1)]:
        if content is not None:
            path.write_text(content)
        result = subprocess.run(COMPOSE_PROBE, cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == code, result
        assert len(result.stdout.splitlines()) == 1 and not result.stderr
    env["PINGER_HEALTH_FILE"] = ""
    result = subprocess.run(COMPOSE_PROBE, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "PINGER_HEALTH_FILE is not set" in result.stdout


# ---------------------------------------------------------------- a pinger in this process


@pytest.fixture
def running(private_mosquitto, tmp_path):
    """Factory: a pinger of this process on a private Mosquitto, writing a heartbeat file
    every 0.1 s (its sweeper tick) and flushing every 0.2 s."""
    started: list[RunningPinger] = []

    def start(**options) -> Pinger:
        options = {"ping_interval": 1.0, "flush_interval": 0.2, **options}
        options.setdefault("health_file", str(tmp_path / "heartbeat"))
        url = f"mqtt://127.0.0.1:{private_mosquitto.port}"
        pinger = Pinger(url, "iot-server", "secret", None, **options)
        started.append(RunningPinger(pinger))
        return pinger

    yield start
    for runner in started:
        runner.stop()


def seconds_until_unhealthy(path: str, max_age: float, timeout: float) -> tuple[float, str]:
    """Seconds until the check fails, and its line."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        healthy, line = check_heartbeat(path, max_age)
        if not healthy:
            return time.monotonic() - started, line
        time.sleep(0.02)
    raise AssertionError(f"still healthy after {timeout} s: {line}")


def test_a_hung_sweep_fails_the_check_within_two_intervals(running):
    """The sweeper thread stuck in a sweep (e.g. on a lock or a slow query): the heartbeat
    stops, and the check fails once it is older than the limit."""
    max_age = 1.0
    pinger = running()
    path = pinger.health_file
    assert wait_until(lambda: check_heartbeat(path, max_age)[0], timeout=5)
    release = threading.Event()
    stuck = threading.Event()

    def hang(*args, **kwargs):
        stuck.set()
        release.wait(30)
        return [], []

    pinger.sweep = hang  # the sweeper calls it at its next tick while connected
    assert stuck.wait(5)
    elapsed, line = seconds_until_unhealthy(path, max_age, timeout=10)
    release.set()
    # The last beat came at most a tick (0.1 s) before the sweep hung; the lower bound has
    # slack for this thread being scheduled late.
    assert max_age - 0.5 <= elapsed <= 2 * max_age, elapsed
    assert "the pinger's loop last turned" in line
    assert wait_until(lambda: check_heartbeat(path, max_age)[0], timeout=5), "not healthy again"


def test_a_hung_flush_fails_the_check(running):
    """The presence writer stuck in a database call: the check says so."""
    max_age = 1.0
    pinger = running()
    path = pinger.health_file
    assert wait_until(lambda: check_heartbeat(path, max_age)[0], timeout=5)
    release = threading.Event()
    stuck = threading.Event()

    def hang():
        stuck.set()
        release.wait(30)
        return 0

    pinger.flush = hang
    assert stuck.wait(5)
    elapsed, line = seconds_until_unhealthy(path, max_age, timeout=10)
    release.set()
    limit = max_age + pinger.flush_interval
    assert limit - 0.5 <= elapsed <= 2 * limit, elapsed
    assert "the presence writer last turned" in line
    assert wait_until(lambda: check_heartbeat(path, max_age)[0], timeout=5), "not healthy again"


def test_healthy_through_a_broker_outage(running, private_mosquitto):
    """The decision of docs/deployment.md: a broker outage is reported, not unhealthy."""
    pinger = running()
    path = pinger.health_file
    assert wait_until(lambda: "broker connected" in check_heartbeat(path, 1.0)[1], timeout=5)
    private_mosquitto.kill()
    assert wait_until(lambda: not pinger.connected.is_set(), timeout=5)
    time.sleep(1.5)  # longer than the limit: the heartbeat kept coming
    healthy, line = check_heartbeat(path, 1.0)
    assert healthy, line
    assert re.search(r"broker disconnected, reconnecting for \d+\.\d s;", line), line
    private_mosquitto.start()
    assert wait_until(lambda: "broker connected for" in check_heartbeat(path, 1.0)[1], timeout=10)


def test_an_unwritable_heartbeat_warns_once_and_recovers(running, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="iot_server.pinger")
    path = tmp_path / "not-yet" / "heartbeat"
    pinger = running(health_file=str(path))

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot write the heartbeat" in r.getMessage()]

    assert wait_until(warnings, timeout=5)
    time.sleep(0.5)  # five more ticks, five more failed writes
    assert len(warnings()) == 1
    assert not check_heartbeat(str(path), 1.0)[0]
    path.parent.mkdir()
    assert wait_until(lambda: check_heartbeat(str(path), 1.0)[0], timeout=5)
    assert any("heartbeat written again" in r.getMessage() for r in caplog.records)
    assert pinger.connected.is_set()


def test_a_clean_stop_removes_the_heartbeat(private_mosquitto, tmp_path):
    path = tmp_path / "heartbeat"
    url = f"mqtt://127.0.0.1:{private_mosquitto.port}"
    runner = RunningPinger(Pinger(url, None, None, None, health_file=str(path)))
    assert wait_until(path.exists, timeout=5)
    runner.stop()
    assert not path.exists()
    assert not list(tmp_path.iterdir())  # no temporary file left either


# ---------------------------------------------------------------- the real process


def probe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one health probe as Docker would: its exit status and its one line."""
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("command", "timed_probe"),
    [
        # What compose and the Procfile run, under the image's HEALTHCHECK (`docker run …
        # flask --app wsgi pinger`, the case of the issue).
        (["-m", "flask", "--app", "wsgi", "pinger"], "image"),
        (["-m", "iot_server.pinger"], "compose"),
    ],
    ids=["flask-pinger", "python-m-pinger"],
)
def test_the_probes_follow_a_real_pinger_process(private_mosquitto, tmp_path, command, timed_probe):
    """A real pinger: both probes healthy while it runs; frozen with SIGSTOP, the probe
    fails within two intervals (PINGER_HEALTH_MAX_AGE, the HEALTHCHECK interval); thawed,
    healthy again; after SIGTERM, unhealthy (no heartbeat)."""
    max_age = 4
    path = tmp_path / "heartbeat"
    env = pinger_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'pinger.sqlite'}",
        MQTT_BROKER_URL=f"mqtt://127.0.0.1:{private_mosquitto.port}",
        PINGER_HEALTH_FILE=str(path),
        PINGER_HEALTH_MAX_AGE=str(max_age),
        # `python` and `flask` of this interpreter, as in the image.
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    probe_env = {**env, "IOT_HEALTHCHECK_PID": str(process.pid)}
    probes = {"image": IMAGE_PROBE, "compose": COMPOSE_PROBE}
    timed = probes[timed_probe]
    try:
        assert wait_until(
            lambda: "broker connected" in probe(timed, probe_env).stdout, timeout=60, step=0.2
        ), probe(timed, probe_env).stdout

        # Running: healthy at every probe, for longer than the limit (so the beat is fresh).
        started = time.monotonic()
        while time.monotonic() - started < max_age + 1:
            for argv in probes.values():
                result = probe(argv, probe_env)
                assert result.returncode == 0, result
                assert result.stdout.startswith("healthy: loop "), result.stdout
                assert len(result.stdout.splitlines()) == 1

        process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        while (result := probe(timed, probe_env)).returncode == 0:
            assert time.monotonic() - stopped < 4 * max_age, "still healthy"
        elapsed = time.monotonic() - stopped
        # The last beat came at most one tick (1 s) before the stop.
        assert max_age - 1 <= elapsed <= 2 * max_age, elapsed
        assert result.returncode == 1
        assert result.stdout.startswith("unhealthy: the pinger's loop last turned")

        process.send_signal(signal.SIGCONT)
        assert wait_until(lambda: probe(timed, probe_env).returncode == 0, timeout=10, step=0.2)

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0, stderr
        # (In a container the image's probe never runs after its process ended.)
        result = probe(COMPOSE_PROBE, probe_env)
        assert result.returncode == 1
        assert "no heartbeat at" in result.stdout
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()
    print(f"{shlex.join(command)}, {timed_probe} probe: unhealthy {elapsed:.2f} s after SIGSTOP")
