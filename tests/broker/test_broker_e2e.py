"""End to end: a real amqtt broker (its go-auth-style HTTP plugins pointed at the app served
on a free port) and real paho clients, checking what a device really experiences."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid as uuidlib

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.slow

SECRET = "test-mqtt-secret-0123456789abcdefghijkl"
TIMEOUT = 5.0


class Client:
    """A paho client (VERSION2) whose callbacks feed events the test waits on."""

    def __init__(self, port: int, username: str, password: str, client_id: str | None = None):
        self.port = port
        self.client_id = client_id or f"test-{uuidlib.uuid4().hex[:8]}"
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self.paho.username_pw_set(username, password)
        self.connack: queue.Queue = queue.Queue()
        self.subacks: dict[int, list] = {}
        self.messages: queue.Queue = queue.Queue()
        self._suback_ready = threading.Condition()
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack.put(reason_code)
        if reason_code.is_failure:
            client.disconnect()  # no automatic retries of a refused login

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_ready:
            self.subacks[mid] = reason_codes
            self._suback_ready.notify_all()

    def _on_message(self, client, userdata, message):
        self.messages.put((message.topic, json.loads(message.payload)))

    def connect(self):
        """Connect and return the CONNACK reason code."""
        self.paho.connect("127.0.0.1", self.port, keepalive=30)
        self.paho.loop_start()
        return self.connack.get(timeout=TIMEOUT)

    def subscribe(self, topic: str, qos: int = 1):
        """Subscribe and return the SUBACK's reason code for the filter."""
        result, mid = self.paho.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        with self._suback_ready:
            assert self._suback_ready.wait_for(lambda: mid in self.subacks, TIMEOUT)
            [code] = self.subacks[mid]
        return code

    def publish(self, topic: str, payload: dict, qos: int = 1) -> None:
        """Publish and wait until the broker acknowledged it."""
        info = self.paho.publish(topic, json.dumps(payload), qos=qos)
        info.wait_for_publish(TIMEOUT)

    def expect(self, topic: str, payload: dict) -> None:
        """Wait for one message and check it."""
        assert self.messages.get(timeout=TIMEOUT) == (topic, payload)

    def expect_nothing(self, within: float = 0.8) -> None:
        """Assert no message arrives for a while."""
        with pytest.raises(queue.Empty):
            got = self.messages.get(timeout=within)
            pytest.fail(f"unexpected message {got}")

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients(amqtt_broker):
    """Open clients on the test's broker, all closed at the end."""
    opened: list[Client] = []

    def open_client(username: str, password: str, client_id: str | None = None) -> Client:
        client = Client(amqtt_broker.port, username, password, client_id)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def connected(clients, username: str, password: str, client_id: str | None = None) -> Client:
    """A client that connected successfully."""
    client = clients(username, password, client_id)
    code = client.connect()
    assert not code.is_failure, code
    return client


def test_device_connects_publishes_and_receives(devices, clients):
    """A registered agent talks on its own topics through the broker."""
    agent = devices.agent(devices.master())
    device = connected(clients, f"device_{agent}", devices.token(agent))
    assert not device.subscribe(f"device/{agent}/ping").is_failure
    device.publish(f"device/{agent}/ping", {"c": "PING"})
    device.expect(f"device/{agent}/ping", {"c": "PING"})
    assert devices.sessions(agent) == {device.client_id: 1}


def test_wrong_token_refused_at_connect(devices, clients):
    """A bad token gets CONNACK 'not authorized' (MQTT 3.1.1 return code 5)."""
    agent = devices.agent(devices.master())
    other = devices.agent(devices.master())
    for password in ("not-a-token", devices.token(other)):
        code = clients(f"device_{agent}", password).connect()
        assert code.is_failure
        assert code == "Not authorized"


def test_foreign_and_wildcard_subscriptions_refused(devices, clients):
    """SUBACK 0x80 for another device's topic and for `device/#`; own topics still fine."""
    master = devices.master()
    agent = devices.agent(master)
    stranger = devices.agent(devices.master())
    device = connected(clients, f"device_{agent}", devices.token(agent))
    for topic in (f"device/{stranger}/ping", f"device/{master}/data", "device/#", "#"):
        code = device.subscribe(topic)
        assert code.is_failure and code.value == 0x80, (topic, code)
    assert not device.subscribe(f"device/{agent}/data").is_failure


def test_master_and_agent_talk_on_the_agents_master_topic(devices, clients):
    """`device/<agent>/master` carries messages both ways between a master and its agent."""
    master = devices.master()
    agent = devices.agent(master)
    topic = f"device/{agent}/master"
    m = connected(clients, f"device_{master}", devices.token(master))
    a = connected(clients, f"device_{agent}", devices.token(agent))
    assert not m.subscribe(topic).is_failure
    assert not a.subscribe(topic).is_failure
    m.publish(topic, {"c": "SET", "v": 1})
    a.expect(topic, {"c": "SET", "v": 1})
    m.expect(topic, {"c": "SET", "v": 1})  # MQTT 3.1.1 has no "no local"
    a.publish(topic, {"c": "ACK"})
    m.expect(topic, {"c": "ACK"})
    a.expect(topic, {"c": "ACK"})


def test_service_account_hears_every_device(devices, clients):
    """The pinger's subscriptions receive devices' pings and data, and it can answer."""
    agent = devices.agent(devices.master())
    service = connected(clients, "iot-server", SECRET)
    assert not service.subscribe("device/+/ping").is_failure
    assert not service.subscribe("device/+/data").is_failure
    assert service.subscribe("device/#").is_failure
    device = connected(clients, f"device_{agent}", devices.token(agent))
    assert not device.subscribe(f"device/{agent}/ping").is_failure
    device.publish(f"device/{agent}/data", {"t": 21.5})
    service.expect(f"device/{agent}/data", {"t": 21.5})
    service.publish(f"device/{agent}/ping", {"c": "PONG", "src": "server"})
    device.expect(f"device/{agent}/ping", {"c": "PONG", "src": "server"})


def test_revoked_device_is_cut_off(app, devices, clients, runner):
    """After `flask devices revoke`: no new connection, and the live session's publishes
    and deliveries stop within HOOK_CACHE_TTL (the go-auth contract's only lever)."""
    agent = devices.agent(devices.master())
    token = devices.token(agent)
    service = connected(clients, "iot-server", SECRET)
    assert not service.subscribe("device/+/data").is_failure
    device = connected(clients, f"device_{agent}", token)
    assert not device.subscribe(f"device/{agent}/ping").is_failure
    device.publish(f"device/{agent}/data", {"n": 1})
    service.expect(f"device/{agent}/data", {"n": 1})

    result = runner.invoke(args=["devices", "revoke", agent])
    assert result.exit_code == 0, result.output
    revoked_at = time.monotonic()

    code = clients(f"device_{agent}", token).connect()
    assert code == "Not authorized"

    time.sleep(max(0.0, revoked_at + app.config["HOOK_CACHE_TTL"] + 0.3 - time.monotonic()))
    device.publish(f"device/{agent}/data", {"n": 2})
    service.publish(f"device/{agent}/ping", {"c": "PING", "src": "server"})
    service.expect_nothing()
    device.expect_nothing(within=0.3)
