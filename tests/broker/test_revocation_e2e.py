"""End to end on a go-auth broker (amqtt): revoking through the owner API cuts a device that
is already connected, by the per-message ACL check, within the hook cache bound.

The device connects as SPEC.md says (username `device_<uuid>`, password its token) and
publishes on its data topic; the service account listens there. After the owner revokes,
releases or unlinks, no message of the old session is delivered once HOOK_CACHE_TTL has
passed, and the old token cannot connect again.
"""

from __future__ import annotations

import json
import queue
import time
import uuid as uuidlib

import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_SECRET
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.slow

CACHE_TTL = 1
TIMEOUT = 5.0


@pytest.fixture
def app_config(app_config):
    """A short hook cache, so the test waits one second rather than the default two."""
    return {**app_config, "HOOK_CACHE_TTL": CACHE_TTL}


class Mqtt:
    """A paho client (VERSION2) whose CONNACK and messages the test waits on."""

    def __init__(self, port: int, username: str, password: str):
        self.port = port
        self.client_id = f"e2e-{uuidlib.uuid4().hex[:10]}"
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self.paho.username_pw_set(username, password)
        self.connack: queue.Queue = queue.Queue()
        self.subscribed: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.paho.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.paho.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.put(rcs)
        self.paho.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload)))

    def connect(self):
        """Connect; the CONNACK reason code."""
        self.paho.connect("127.0.0.1", self.port, keepalive=30)
        self.paho.loop_start()
        code = self.connack.get(timeout=TIMEOUT)
        if code.is_failure:
            self.paho.disconnect()  # no automatic retries of a refused login
        return code

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for a granted SUBACK."""
        self.paho.subscribe(topic, qos=1)
        [code] = self.subscribed.get(timeout=TIMEOUT)
        assert not code.is_failure, code

    def publish(self, topic: str, payload: dict) -> None:
        """Publish at QoS 0 (a revoked session may never get a PUBACK)."""
        self.paho.publish(topic, json.dumps(payload), qos=0)

    def received(self, within: float) -> list:
        """Every message that arrives within `within` seconds."""
        found, deadline = [], time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                found.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return found

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients():
    """MQTT clients made by a test, closed afterwards."""
    made: list[Mqtt] = []
    yield made
    for client in made:
        client.close()


def connected_pair(amqtt_broker, clients, devices, uuid):
    """The service account listening on the device's data topic, and the device connected."""
    service = Mqtt(amqtt_broker.port, "iot-server", MQTT_SECRET)
    clients.append(service)
    assert not service.connect().is_failure
    service.subscribe("device/+/data")
    token = devices.token(uuid)
    device = Mqtt(amqtt_broker.port, f"device_{uuid}", token)
    clients.append(device)
    assert not device.connect().is_failure
    return service, device, token


def assert_cut_off(service, device, uuid, token, amqtt_broker, clients):
    """Within the cache bound, the live session's publishes stop; the token cannot reconnect."""
    topic = f"device/{uuid}/data"
    deadline = time.monotonic() + CACHE_TTL + 0.5
    while time.monotonic() < deadline:
        device.publish(topic, {"n": "during"})
        time.sleep(0.1)
    service.received(0.5)  # drain what was sent inside the cache bound
    for n in range(5):
        device.publish(topic, {"n": n})
    assert service.received(1.5) == []
    again = Mqtt(amqtt_broker.port, f"device_{uuid}", token)
    clients.append(again)
    assert again.connect().is_failure


def assert_delivered(service, device, uuid):
    """The device's publishes reach the service account."""
    topic = f"device/{uuid}/data"
    device.publish(topic, {"n": "before"})
    assert service.received(2.0) == [(topic, {"n": "before"})]


def test_revoke_stops_a_connected_device(app, devices, amqtt_broker, clients):
    master = devices.master()
    service, device, token = connected_pair(amqtt_broker, clients, devices, master)
    assert_delivered(service, device, master)
    response = app.test_client().post(f"/devices/{master}/revoke", headers=devices.owner_headers())
    assert response.status_code == 200
    assert_cut_off(service, device, master, token, amqtt_broker, clients)


def test_revoke_stops_every_session_of_a_device(app, devices, amqtt_broker, clients):
    """Two sessions of one device (different client ids): both deliver, and one revoke
    cuts both."""
    master = devices.master()
    service, first, token = connected_pair(amqtt_broker, clients, devices, master)
    second = Mqtt(amqtt_broker.port, f"device_{master}", token)
    clients.append(second)
    assert not second.connect().is_failure
    assert_delivered(service, first, master)
    assert_delivered(service, second, master)
    response = app.test_client().post(f"/devices/{master}/revoke", headers=devices.owner_headers())
    assert response.status_code == 200
    assert_cut_off(service, first, master, token, amqtt_broker, clients)
    assert_cut_off(service, second, master, token, amqtt_broker, clients)


def test_release_stops_a_connected_master(app, devices, amqtt_broker, clients):
    master = devices.master()
    service, device, token = connected_pair(amqtt_broker, clients, devices, master)
    assert_delivered(service, device, master)
    response = app.test_client().delete(f"/devices/{master}/claim", headers=devices.owner_headers())
    assert response.status_code == 200
    assert_cut_off(service, device, master, token, amqtt_broker, clients)


def test_unlink_stops_a_connected_agent(app, devices, amqtt_broker, clients):
    master = devices.master()
    agent = devices.agent(master=master)
    service, device, token = connected_pair(amqtt_broker, clients, devices, agent)
    assert_delivered(service, device, agent)
    url = f"/devices/{master}/agents/{agent}"
    assert app.test_client().delete(url, headers=devices.owner_headers()).status_code == 200
    assert_cut_off(service, device, agent, token, amqtt_broker, clients)
