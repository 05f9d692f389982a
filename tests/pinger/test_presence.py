"""Presence bookkeeping without MQTT: re-PING schedule, offline after three misses, pending
writes, and the batch UPDATE on SQLite and PostgreSQL."""

from datetime import UTC, datetime

import pytest
from conftest import new_uuid
from sqlalchemy import event

from iot_server.extensions import db
from iot_server.models import Device
from iot_server.pinger.client import (
    parse_broker_url,
    parse_device_message,
    ping_subscription,
    write_last_seen,
)
from iot_server.pinger.presence import PendingSeen, Presence, key_uuid, uuid_key

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_uuid_key_round_trip():
    assert key_uuid(uuid_key(UUID)) == UUID


def test_a_device_that_keeps_pinging_is_never_due():
    presence = Presence(interval=15, max_misses=3)
    for now in range(0, 100, 10):
        presence.seen(UUID, now)
        assert presence.sweep(now + 5) == ([], [])
    assert UUID in presence


def test_silent_device_is_pinged_three_times_then_offline():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    assert presence.sweep(14.9) == ([], [])
    assert presence.sweep(15) == ([UUID], [])
    assert presence.misses(UUID) == 1
    assert presence.sweep(29.9) == ([], [])
    assert presence.sweep(30) == ([UUID], [])
    assert presence.sweep(45) == ([UUID], [])
    assert presence.misses(UUID) == 3
    assert presence.sweep(59.9) == ([], [])
    assert presence.sweep(60) == ([], [UUID])
    assert UUID not in presence
    assert len(presence) == 0
    assert presence.sweep(1000) == ([], [])


def test_an_answer_forgives_the_misses():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    presence.sweep(15)
    presence.sweep(30)
    presence.seen(UUID, 31)  # the device's PONG
    assert presence.misses(UUID) == 0
    assert presence.sweep(45) == ([], [])
    assert presence.sweep(46) == ([UUID], [])


def test_late_sweep_pings_once_not_in_a_burst():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    assert presence.sweep(40) == ([UUID], [])  # two intervals late: one PING
    assert presence.sweep(40) == ([], [])
    assert presence.sweep(45) == ([UUID], [])
    assert presence.sweep(100) == ([], [UUID])  # silent far too long


def test_a_device_first_heard_after_a_sweep():
    presence = Presence(interval=15, max_misses=3)
    presence.sweep(10)
    presence.seen(UUID, 12)
    assert presence.sweep(26) == ([], [])
    assert presence.sweep(27) == ([UUID], [])


def test_postpone_all_after_an_outage():
    presence = Presence(interval=15, max_misses=3)
    presence.seen(UUID, 0)
    presence.postpone_all(100)
    assert presence.sweep(114) == ([], [])
    assert presence.sweep(115) == ([UUID], [])


def test_memory_is_bounded_by_the_live_fleet():
    presence = Presence(interval=1, max_misses=3)
    for i in range(1000):
        presence.seen(new_uuid(), i / 1000)
    assert len(presence) == 1000
    for now in (2, 3, 4, 5):
        presence.sweep(now)
    assert len(presence) == 0


def test_pending_keeps_the_latest_time_and_takes_in_batches():
    pending = PendingSeen()
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    pending.add(a, 1.0)
    pending.add(b, 2.0)
    pending.add(a, 3.0)
    pending.add(c, 4.0)
    batch = pending.take(2)
    assert batch == {a: 3.0, b: 2.0}
    assert len(pending) == 1
    pending.add(a, 5.0)  # newer than the batch's value
    pending.restore(batch)
    assert dict(pending.items()) == {c: 4.0, a: 5.0, b: 2.0}
    assert pending.take(10) == {c: 4.0, a: 5.0, b: 2.0}
    assert len(pending) == 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://localhost:1883", ("localhost", 1883, False)),
        ("mqtt://broker", ("broker", 1883, False)),
        ("mqtts://emqx.example.com", ("emqx.example.com", 8883, True)),
        ("mqtts://emqx.example.com:8884", ("emqx.example.com", 8884, True)),
    ],
)
def test_parse_broker_url(url, expected):
    address = parse_broker_url(url)
    assert (address.host, address.port, address.tls) == expected


@pytest.mark.parametrize("url", ["localhost:1883", "http://x:1883", "mqtt://", "tcp://x"])
def test_parse_broker_url_rejects(url):
    with pytest.raises(ValueError):
        parse_broker_url(url)


def test_ping_subscription():
    assert ping_subscription(None) == "device/+/ping"
    assert ping_subscription("pingers") == "$share/pingers/device/+/ping"


TOPIC = f"device/{UUID}/ping"


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (TOPIC, b'{"c":"PING"}', (UUID, "PING")),
        (TOPIC, b'{"c": "PONG", "extra": [1, 2]}', (UUID, "PONG")),
        (TOPIC.upper().replace("DEVICE", "device").replace("PING", "ping"), b'{"c":"PING"}',
         (UUID, "PING")),
        (TOPIC, b'{"c":"PONG","src":"server"}', None),
        (TOPIC, b'{"c":"PING","src":"server","x":1}', None),
        (TOPIC, b"PING", None),
        (TOPIC, b"\xff\xfe\x00garbage", None),
        (TOPIC, b"", None),
        (TOPIC, b"[1, 2]", None),
        (TOPIC, b'"PING"', None),
        (TOPIC, b"null", None),
        (TOPIC, b'{"c": 1}', None),
        (TOPIC, b'{"c": ["PING"]}', None),
        (TOPIC, b'{"c": {"PING": 1}}', None),
        (TOPIC, b'{"c":"HELLO"}', None),
        (TOPIC, b"[" * 4000, None),
        (TOPIC, b'{"c":"PING","pad":"' + b"x" * 4100 + b'"}', None),
        ("device/not-a-uuid/ping", b'{"c":"PING"}', None),
        (f"device/{UUID.replace('-', '')}/ping", b'{"c":"PING"}', None),
        (f"device/{UUID}/data", b'{"c":"PING"}', None),
        (f"device/{UUID}/ping/extra", b'{"c":"PING"}', None),
    ],
)  # fmt: skip
def test_parse_device_message(topic, payload, expected):
    assert parse_device_message(topic, payload) == expected


# ---------------------------------------------------------------- the batch UPDATE


def count_statements(engine):
    """A list that grows by one per statement sent through `engine`."""
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args, **kw: statements.append(args[2]))
    return statements


def test_write_last_seen_is_one_statement(app, devices):
    known = [devices.master() for _ in range(50)]
    unknown = [new_uuid() for _ in range(10)]
    at = datetime(2025, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
    before = devices.get(known[0]).updated_at
    with app.app_context():
        engine = db.engine
        statements = count_statements(engine)
        write_last_seen(engine, {u: at.timestamp() + i for i, u in enumerate(known + unknown)})
    assert len(statements) == 1
    assert statements[0].lstrip().upper().startswith("UPDATE")
    for i, uuid in enumerate(known):
        device = devices.get(uuid)
        seen = device.last_seen_at.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        assert seen.timestamp() == pytest.approx(at.timestamp() + i, abs=1e-5)
        assert device.updated_at == before if uuid == known[0] else True
    with app.app_context():
        assert db.session.query(Device).count() == 50  # unknown uuids created nothing


def test_write_last_seen_of_nothing_sends_nothing(app):
    with app.app_context():
        statements = count_statements(db.engine)
        write_last_seen(db.engine, {})
    assert statements == []
