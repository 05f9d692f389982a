"""The mosquitto-go-auth contract, with the bodies go-auth (json and form params) and
amqtt 0.12.1 (`client_id`, acc 1 on every delivery) really send (BROKERS.md)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from iot_server.broker import caches

GRANT = {"ok": True, "error": ""}
SECRET = "test-mqtt-secret-0123456789abcdefghijkl"


def login(client, username, password, clientid, style="go-auth"):
    """POST /mosquitto/user as go-auth (JSON, `clientid`), go-auth form, or amqtt."""
    if style == "form":
        body = {"username": username, "password": password, "clientid": clientid}
        return client.post("/mosquitto/user", data=body)
    key = "client_id" if style == "amqtt" else "clientid"
    return client.post(
        "/mosquitto/user", json={"username": username, "password": password, key: clientid}
    )


def acl(client, username, clientid, topic, acc, style="go-auth"):
    """POST /mosquitto/acl in the given broker's shape."""
    if style == "form":
        body = {"username": username, "clientid": clientid, "topic": topic, "acc": str(acc)}
        return client.post("/mosquitto/acl", data=body)
    key = "client_id" if style == "amqtt" else "clientid"
    return client.post(
        "/mosquitto/acl", json={"username": username, key: clientid, "topic": topic, "acc": acc}
    )


def granted(response) -> bool:
    """True for the grant answer; asserts a deny has the deny shape."""
    if response.status_code == 200:
        assert response.get_json() == GRANT
        return True
    assert response.status_code == 403
    body = response.get_json()
    assert body["ok"] is False and isinstance(body["error"], str) and body["error"]
    return False


STYLES = ["go-auth", "form", "amqtt"]


@pytest.mark.parametrize("style", STYLES)
def test_device_login(client, devices, style):
    """A registered device with its current token: 200 ok; the client id is remembered."""
    agent = devices.agent(devices.master())
    assert granted(login(client, f"device_{agent}", devices.token(agent), "esp-a", style))
    assert devices.sessions(agent) == {"esp-a": 1}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("device_{agent}", "bad-token"),
        ("device_{agent}", ""),
        ("device_{other}", "{token}"),
        ("alice", "whatever"),  # not ours: go-auth has no "ignore", so deny
        ("iot-server", "wrong"),
    ],
)
def test_bad_logins_denied(client, devices, style, username, password):
    """Wrong tokens, foreign tokens, strangers and a wrong service password: 403."""
    agent = devices.agent(devices.master())
    values = {"agent": agent, "other": devices.master(), "token": devices.token(agent)}
    response = login(client, username.format(**values), password.format(**values), "c", style)
    assert not granted(response)


def test_amqtt_without_password_is_denied(client, devices):
    """amqtt sends `"password": null` for a CONNECT without one."""
    agent = devices.agent(devices.master())
    response = client.post(
        "/mosquitto/user", json={"username": f"device_{agent}", "password": None, "client_id": "c"}
    )
    assert not granted(response)


@pytest.mark.parametrize("style", STYLES)
def test_service_login(client, style):
    """The service account with MQTT_SECRET_KEY."""
    assert granted(login(client, "iot-server", SECRET, "pinger", style))


@pytest.mark.parametrize("body", [{"username": "iot-server"}, {"username": "device_x"}, {}])
def test_superuser_always_denied(client, body):
    """No superusers: every topic goes through the ACL."""
    assert not granted(client.post("/mosquitto/superuser", json=body))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("acc", [1, 2, 3, 4])
def test_acl_own_topics(client, devices, style, acc):
    """Read, write, both and subscribe on the device's own topics."""
    master = devices.master()
    agent = devices.agent(master)
    assert granted(login(client, f"device_{master}", devices.token(master), "m", style))
    for topic in (f"device/{master}/ping", f"device/{master}/data", f"device/{agent}/master"):
        assert granted(acl(client, f"device_{master}", "m", topic, acc, style))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    ("topic", "acc", "clientid"),
    [
        ("device/#", 4, "a"),
        ("device/+/ping", 4, "a"),
        ("#", 4, "a"),
        ("device/{master}/ping", 2, "a"),
        ("device/{master}/ping", 1, "a"),
        ("device/{other}/master", 4, "a"),
        ("device/{agent}/ping", 2, "another-session"),
        ("device/{agent}/ping", 0, "a"),
        ("device/{agent}/ping", 5, "a"),
        ("device/{agent}/ping", 8, "a"),
        ("$SYS/broker/uptime", 4, "a"),
    ],
)
def test_acl_denials(client, devices, style, topic, acc, clientid):
    """Other devices' topics, wildcards, unknown acc values, other sessions: 403."""
    master = devices.master()
    agent = devices.agent(master)
    other = devices.agent(devices.master())
    assert granted(login(client, f"device_{agent}", devices.token(agent), "a", style))
    topic = topic.format(master=master, agent=agent, other=other)
    assert not granted(acl(client, f"device_{agent}", clientid, topic, acc, style))


@pytest.mark.parametrize("acc", [True, "1.0", "x", None, [1], "-1", "²", "١", "①", "𝟐"])
def test_malformed_acc_denied(client, devices, acc):
    """acc must be 1, 2, 3 or 4 (a number, or an ASCII digit string from a form). The finding:
    `"²"` passed str.isdigit() and made int() raise, a 500 with a traceback."""
    agent = devices.agent(devices.master())
    granted(login(client, f"device_{agent}", devices.token(agent), "a"))
    response = acl(client, f"device_{agent}", "a", f"device/{agent}/ping", acc)
    assert response.status_code == 403 and response.get_json()["ok"] is False


def test_service_acl(client):
    """The pinger: ping topics both ways, data topics by subscription and delivery."""
    assert granted(acl(client, "iot-server", "p", "device/+/ping", 4))
    assert granted(acl(client, "iot-server", "p", "device/x/ping", 1))
    assert granted(acl(client, "iot-server", "p", "device/x/ping", 2))
    assert granted(acl(client, "iot-server", "p", "device/+/data", 4))
    assert granted(acl(client, "iot-server", "p", "device/x/data", 1))
    assert not granted(acl(client, "iot-server", "p", "device/x/data", 2))
    assert not granted(acl(client, "iot-server", "p", "device/#", 4))


def test_revoked_session_is_cut_within_the_cache_bound(client, devices, runner, monkeypatch):
    """After `flask devices revoke`, the live session's publishes and deliveries are
    refused once the device-state cache (HOOK_CACHE_TTL) has expired."""
    now = [5000.0]
    monkeypatch.setattr(caches, "clock", lambda: now[0])
    agent = devices.agent(devices.master())
    token = devices.token(agent)
    assert granted(login(client, f"device_{agent}", token, "a", "amqtt"))
    assert granted(acl(client, f"device_{agent}", "a", f"device/{agent}/data", 2, "amqtt"))
    assert runner.invoke(args=["devices", "revoke", agent]).exit_code == 0
    now[0] += client.application.config["HOOK_CACHE_TTL"] + 0.01
    assert not granted(acl(client, f"device_{agent}", "a", f"device/{agent}/data", 2, "amqtt"))
    assert not granted(acl(client, f"device_{agent}", "a", f"device/{agent}/data", 1, "amqtt"))
    assert not granted(login(client, f"device_{agent}", token, "a2", "amqtt"))


def test_callers_outside_trusted_networks_need_the_secret(client, devices):
    """No header from outside: 403. The Bearer secret lets a remote broker in."""
    outside = {"REMOTE_ADDR": "198.51.100.20"}
    body = {"username": "iot-server", "password": SECRET, "clientid": "p"}
    assert not granted(client.post("/mosquitto/user", json=body, environ_base=outside))
    response = client.post(
        "/mosquitto/user",
        json=body,
        environ_base=outside,
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert granted(response)
    wrong = client.post(
        "/mosquitto/acl",
        json={"username": "iot-server", "clientid": "p", "topic": "device/+/ping", "acc": 4},
        headers={"Authorization": "Bearer wrong"},
    )
    assert not granted(wrong)


@pytest.mark.parametrize("path", ["/mosquitto/user", "/mosquitto/acl"])
@pytest.mark.parametrize("raw", [b"{oops", b"\xff\xfe", b""])
def test_garbage_is_a_json_400(client, path, raw):
    """Not JSON and not a form: 400 JSON (a deny for both brokers), never HTML."""
    response = client.post(path, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"ok": False, "error": "malformed body"}


@pytest.mark.parametrize("body", [[], "x", {}, {"username": 5, "password": 6, "clientid": 7}])
def test_malformed_json_denied(client, body):
    """JSON of the wrong shape: the contract's deny."""
    assert not granted(client.post("/mosquitto/user", json=body))
    assert not granted(client.post("/mosquitto/acl", json=body))


def test_database_down_denies(client, devices, monkeypatch):
    """An unreachable database: 403 for login and topic checks, never a 5xx."""
    agent = devices.agent(devices.master())
    token = devices.token(agent)

    def unreachable(*args, **kwargs):
        raise OperationalError("SELECT", {}, ConnectionRefusedError("refused"))

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "connect", unreachable)
        assert not granted(login(client, f"device_{agent}", token, "a"))
        assert not granted(acl(client, f"device_{agent}", "a", f"device/{agent}/ping", 2))
    assert granted(login(client, f"device_{agent}", token, "a"))


def test_hooks_are_not_rate_limited(client, devices):
    """amqtt asks for every delivery: hundreds of calls a minute are normal."""
    agent = devices.agent(devices.master())
    assert granted(login(client, f"device_{agent}", devices.token(agent), "a"))
    for _ in range(260):
        assert granted(acl(client, f"device_{agent}", "a", f"device/{agent}/ping", 1, "amqtt"))
