"""The pinger's wire formats: broker URLs, its subscription, and device messages."""

import pytest

from iot_server.pinger.messages import parse_broker_url, parse_device_message, ping_subscription

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


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
