"""The pinger against real brokers: Mosquitto (anonymous; the machine's, or a private one on a
free port that a test may kill and restart) and amqtt wired to the API's hooks.

Intervals are shortened (re-PING every 0.3 s, flush every 0.2 s) so the file runs in seconds.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid as uuidlib
from datetime import UTC

import paho.mqtt.client as mqtt
import pytest
from conftest import (
    MQTT_SECRET,
    free_port,
    new_uuid,
    pinger_env,
    pinger_process,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine

from iot_server.extensions import db
from iot_server.models import Device
from iot_server.pinger import client as client_module
from iot_server.pinger.client import Pinger

pytestmark = pytest.mark.slow

PING = json.dumps({"c": "PING"})
PONG = json.dumps({"c": "PONG"})
INTERVAL = 0.3


# ---------------------------------------------------------------- brokers and clients


class RunningPinger:
    """A Pinger serving in a thread of the test process."""

    def __init__(self, pinger: Pinger):
        self.pinger = pinger
        self.thread = threading.Thread(target=pinger.run, daemon=True)
        self.thread.start()
        assert pinger.subscribed.wait(10), "pinger did not connect and subscribe"

    def stop(self) -> None:
        self.pinger.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "run() did not return after stop()"


@pytest.fixture
def start_pinger(app):
    """Factory: a pinger with short intervals on the test's database and a given broker."""
    started: list[RunningPinger] = []
    # Its own engine, as in its own process: its statement counter sees only its writes.
    engine = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])

    def start(port: int, **options) -> Pinger:
        options = {"ping_interval": INTERVAL, "flush_interval": 0.2, **options}
        pinger = Pinger(f"mqtt://127.0.0.1:{port}", "iot-server", MQTT_SECRET, engine, **options)
        started.append(RunningPinger(pinger))
        return pinger

    yield start
    for running in started:
        running.stop()
    engine.dispose()


def retained_on(port: int, topic: str) -> list[bytes]:
    """Retained messages a fresh subscriber receives on `topic`."""
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(m.payload) if m.retain else None
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    time.sleep(0.3)
    client.disconnect()
    client.loop_stop()
    return got


# ---------------------------------------------------------------- Mosquitto


def test_ping_gets_pong_on_the_machines_mosquitto(mosquitto_port, start_pinger, fake_devices):
    start_pinger(mosquitto_port)
    device = fake_devices(mosquitto_port)
    device.send(PING)
    body, message = device.from_server()
    assert body == {"c": "PONG", "src": "server"}
    assert message.topic == device.topic
    assert message.qos == 1
    assert retained_on(mosquitto_port, device.topic) == []


def test_silent_device_is_pinged_three_times_then_offline(
    private_mosquitto, start_pinger, fake_devices
):
    pinger = start_pinger(private_mosquitto.port)
    device = fake_devices(private_mosquitto.port)
    device.send(PING)
    assert device.from_server()[0]["c"] == "PONG"
    sent = time.monotonic()
    received = device.server_messages(during=6 * INTERVAL)
    assert [body for _, body in received] == [{"c": "PING", "src": "server"}] * 3
    arrivals = [t for t, _ in received]
    gaps = [b - a for a, b in zip([sent, *arrivals], arrivals, strict=False)]
    assert all(INTERVAL * 0.8 < gap < INTERVAL * 2 for gap in gaps), gaps
    assert wait_until(lambda: len(pinger.presence) == 0)
    assert pinger.stats["offline"] == 1
    assert pinger.stats["server_pings"] == 3
    assert retained_on(private_mosquitto.port, device.topic) == []


def test_a_device_that_answers_stays_online(private_mosquitto, start_pinger, fake_devices):
    pinger = start_pinger(private_mosquitto.port)
    device = fake_devices(private_mosquitto.port)
    device.send(PING)
    device.from_server()
    deadline = time.monotonic() + 8 * INTERVAL
    server_pings = 0
    while time.monotonic() < deadline:
        try:
            body, _ = device.from_server(timeout=deadline - time.monotonic())
        except AssertionError:
            break
        if body["c"] == "PING":
            server_pings += 1
            device.send(PONG)
    assert server_pings >= 4  # one per quiet interval, never escalating to offline
    assert len(pinger.presence) == 1
    assert pinger.stats["offline"] == 0
    assert pinger.stats["pongs"] >= 4


def test_a_fleet_due_at_once_is_pinged_as_fast_as_the_broker_acknowledges(
    private_mosquitto, start_pinger, monkeypatch
):
    """2,000 devices go quiet together: every one gets its server PING, none dropped, and
    never more than the window of them awaits the broker's PUBACK (the rest wait packed)."""
    window = 25
    monkeypatch.setattr(client_module, "SERVER_PING_WINDOW", window)
    pinger = start_pinger(private_mosquitto.port, ping_interval=1.0)
    waiting_at_send: list[int] = []
    publish = pinger.publish

    def watched_publish(topic, payload):
        if payload == client_module.SERVER_PING:
            waiting_at_send.append(pinger.unacknowledged())
        return publish(topic, payload)

    pinger.publish = watched_publish
    uuids = [new_uuid() for _ in range(2000)]
    pinged: set[str] = set()
    fleet = mqtt.Client(CallbackAPIVersion.VERSION2)
    fleet.on_message = lambda c, u, m: (
        pinged.add(m.topic.split("/")[1]) if m.payload == client_module.SERVER_PING else None
    )
    fleet.connect("127.0.0.1", private_mosquitto.port)
    fleet.subscribe("device/+/ping", qos=0)
    fleet.loop_start()
    try:
        for uuid in uuids:
            fleet.publish(f"device/{uuid}/ping", PING, qos=0)
        assert wait_until(lambda: pinger.stats["pings"] == len(uuids), timeout=10)
        assert wait_until(lambda: pinged >= set(uuids), timeout=10), len(pinged)
    finally:
        fleet.disconnect()
        fleet.loop_stop()
    assert pinger.stats["dropped"] == 0
    assert pinger.stats["stale"] == 0
    assert len(waiting_at_send) >= len(uuids)
    assert max(waiting_at_send) < window


def test_unacknowledged_follows_the_brokers_pubacks(private_mosquitto, start_pinger):
    """`Pinger.unacknowledged` reads paho's own table of QoS 1 messages awaiting a PUBACK
    (paho has no public accessor): a frozen broker acknowledges nothing, a thawed one all."""
    pinger = start_pinger(private_mosquitto.port)
    assert pinger.unacknowledged() == 0
    private_mosquitto.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(5):
            assert pinger.publish(f"device/{new_uuid()}/ping", client_module.SERVER_PING)
        assert pinger.unacknowledged() == 5
    finally:
        private_mosquitto.process.send_signal(signal.SIGCONT)
    assert wait_until(lambda: pinger.unacknowledged() == 0, timeout=5)


def test_presence_is_written_in_batches(
    private_mosquitto, start_pinger, fake_devices, devices, app
):
    pinger = start_pinger(private_mosquitto.port, ping_interval=30)
    registered = [devices.master() for _ in range(5)]
    unknown = new_uuid()
    sessions = [fake_devices(private_mosquitto.port, uuid=uuid) for uuid in [*registered, unknown]]
    started = time.monotonic()
    for _ in range(20):
        for session in sessions:
            session.send(PING)
    assert wait_until(lambda: pinger.stats["pings"] == 120)
    assert wait_until(lambda: len(pinger.pending) == 0 and pinger.stats["flushes"] >= 1)
    elapsed = time.monotonic() - started
    for uuid in registered:
        seen = devices.get(uuid).last_seen_at
        assert seen is not None
        assert abs(time.time() - seen.replace(tzinfo=UTC).timestamp()) < 10
    with app.app_context():
        assert db.session.get(Device, unknown) is None
    # 120 PINGs, one UPDATE per flush, at most one flush per flush_interval.
    assert pinger.stats["statements"] == pinger.stats["flushes"]
    assert pinger.stats["flushes"] <= elapsed / 0.2 + 1
    assert pinger.stats["statements"] <= 10


def test_garbage_is_ignored_and_the_pinger_survives(private_mosquitto, start_pinger, fake_devices):
    pinger = start_pinger(private_mosquitto.port, ping_interval=30)
    device = fake_devices(private_mosquitto.port)
    garbage = [
        b"\x00\xff\xfe\x80 binary",
        b"",
        b"PING",
        b"[" * 3000,
        json.dumps({"c": "PING", "pad": "x" * 5000}).encode(),  # over 4 KB
        b"x" * 200_000,
        b"[1, 2, 3]",
        b'"PING"',
        b"null",
        b'{"c": 1}',
        b'{"c": ["PING"]}',
        b'{"c": null}',
        b'{"c": "PING", "src": "server"}',  # pretends to be a replica: no answer
    ]
    for payload in garbage:
        device.send(payload)
    device.send(PING, topic="device/not-a-uuid/ping")
    device.send(PING, topic=f"device/{device.uuid.replace('-', '')}/ping")
    # (The fake replica's PING comes back to the device itself: only PONGs would be answers.)
    assert [body for _, body in device.server_messages(during=0.5) if body["c"] == "PONG"] == []
    assert wait_until(lambda: pinger.stats["ignored"] >= len(garbage) + 1)
    assert len(pinger.presence) == 0
    device.send(PING)
    assert device.from_server()[0] == {"c": "PONG", "src": "server"}
    assert pinger.stats["pings"] == 1


def test_broker_restart_reconnects_and_resubscribes(private_mosquitto, start_pinger, fake_devices):
    pinger = start_pinger(private_mosquitto.port, ping_interval=30)
    device = fake_devices(private_mosquitto.port)
    device.send(PING)
    assert device.from_server()[0]["c"] == "PONG"

    private_mosquitto.kill()
    assert wait_until(lambda: not pinger.connected.is_set())
    time.sleep(0.5)
    private_mosquitto.start()  # same port; a fresh broker with no subscriptions

    assert pinger.subscribed.wait(15), "pinger did not reconnect and resubscribe"
    assert wait_until(lambda: device.client.is_connected(), timeout=10)
    assert device.ping_until_pong()["c"] == "PONG"
    assert pinger.stats["connects"] == 2


def test_shared_subscription_answers_each_ping_once(mosquitto_port, start_pinger, fake_devices):
    group = f"test-{uuidlib.uuid4().hex[:8]}"
    first = start_pinger(mosquitto_port, shared_group=group, ping_interval=30)
    second = start_pinger(mosquitto_port, shared_group=group, ping_interval=30)
    device = fake_devices(mosquitto_port)
    for _ in range(10):
        device.send(PING)
    pongs = [b for _, b in device.server_messages(during=1.0) if b["c"] == "PONG"]
    assert len(pongs) == 10
    assert first.stats["pings"] + second.stats["pings"] == 10
    assert first.stats["pings"] > 0 and second.stats["pings"] > 0


def test_database_outage_keeps_pending_and_retries(tmp_path):
    path = tmp_path / "later" / "db.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    pinger = Pinger("mqtt://127.0.0.1:1", None, None, engine)
    uuid = new_uuid()
    pinger.pending.add(uuid, 1000.0)
    assert pinger.flush() == 0  # the directory does not exist: cannot open the database
    assert pinger.stats["db_errors"] == 1
    pinger.pending.add(uuid, 2000.0)  # the latest time wins
    assert pinger.flush() == 0
    assert len(pinger.pending) == 1

    path.parent.mkdir()
    Device.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(Device.__table__.insert().values(uuid=uuid, kind="master"))
    assert pinger.flush() == 1
    assert len(pinger.pending) == 0
    with engine.connect() as connection:
        seen = connection.execute(Device.__table__.select()).one().last_seen_at
    assert seen.replace(tzinfo=UTC).timestamp() == 2000.0
    engine.dispose()


# ---------------------------------------------------------------- the process


def test_process_flushes_on_sigterm_and_exits_zero(
    private_mosquitto, fake_devices, devices, app_config
):
    uuid = devices.master()
    process = pinger_process(
        pinger_env(
            DATABASE_URL=app_config["SQLALCHEMY_DATABASE_URI"],
            MQTT_BROKER_URL=f"mqtt://127.0.0.1:{private_mosquitto.port}",
        )
    )
    try:
        device = fake_devices(private_mosquitto.port, uuid=uuid)
        assert device.ping_until_pong(timeout=15)["c"] == "PONG"
        before = time.time()
        device.send(PING)
        device.from_server()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "pinger stopped" in stderr
    seen = devices.get(uuid).last_seen_at.replace(tzinfo=UTC).timestamp()
    assert seen >= before - 0.01  # the last PING, written by the flush at exit


def test_process_stops_while_the_broker_is_unreachable():
    process = pinger_process(pinger_env(MQTT_BROKER_URL=f"mqtt://127.0.0.1:{free_port()}"))
    try:
        # Its signal handlers are set before it says it is connecting: wait for that line
        # (a loaded machine can take seconds to import), then for paho's retry backoff.
        for line in process.stderr:
            if "pinger connecting" in line:
                break
        time.sleep(1.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 3


def test_process_refuses_to_start_without_the_service_password():
    process = pinger_process(pinger_env(MQTT_SECRET_KEY=None))
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert "MQTT_SECRET_KEY" in stderr


# ---------------------------------------------------------------- amqtt with the hooks


def test_registered_device_gets_pong_through_amqtt_and_the_hooks(
    amqtt_broker, start_pinger, fake_devices, devices
):
    pinger = start_pinger(amqtt_broker.port, ping_interval=30)
    uuid = devices.master()
    device = fake_devices(amqtt_broker.port, uuid=uuid, password=devices.token(uuid))
    device.send(PING)
    body, message = device.from_server(timeout=10)
    assert body == {"c": "PONG", "src": "server"}
    assert message.topic == f"device/{uuid}/ping"
    assert pinger.stats["pings"] == 1


def test_two_sessions_of_one_device_both_get_the_pong(
    amqtt_broker, start_pinger, fake_devices, devices
):
    """A board's firmware and a second connection (or a mosquitto_sub) of the same device,
    under different client ids: a new login cuts neither, and both hear every PONG."""
    start_pinger(amqtt_broker.port, ping_interval=30)
    uuid = devices.master()
    token = devices.token(uuid)
    firmware = fake_devices(amqtt_broker.port, uuid=uuid, password=token, client_id="firmware")
    debugger = fake_devices(amqtt_broker.port, uuid=uuid, password=token, client_id="debugger")
    for sender in (firmware, debugger):
        sender.send(PING)
        for session in (firmware, debugger):
            assert session.from_server(timeout=10)[0] == {"c": "PONG", "src": "server"}
    assert devices.sessions(uuid) == {"firmware": 1, "debugger": 1}
