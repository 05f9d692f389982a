"""The EMQX 5.8 hooks, called exactly as EMQX calls them (BROKERS.md): every body value a
string, undefined placeholders as "", unknown ones literally, EMQX's default headers plus
our Authorization header."""

from __future__ import annotations

import time

import pytest
from flask_jwt_extended import decode_token
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from test_policy import DENY_ALL, check_emqx_rule

from iot_server import metrics
from iot_server.broker import emqx_hooks

SECRET = "test-mqtt-secret-0123456789abcdefghijkl"
UNTRUSTED = {"REMOTE_ADDR": "203.0.113.50"}
#: EMQX's default request headers (emqx_authn_http / emqx_authz_http), plus ours.
EMQX_HEADERS = {
    "accept": "application/json",
    "cache-control": "no-cache",
    "connection": "keep-alive",
    "content-type": "application/json",
    "Authorization": f"Bearer {SECRET}",
}


def authn_body(username="", password="", clientid="", peerhost="192.0.2.10") -> dict:
    """The body our emqx/ config renders: every value a string."""
    return {"clientid": clientid, "username": username, "password": password, "peerhost": peerhost}


def authz_body(username, clientid, topic, action="publish", qos="1", retain="false") -> dict:
    """The authz body our emqx/ config renders: qos and retain as strings too."""
    return {
        "clientid": clientid,
        "username": username,
        "topic": topic,
        "action": action,
        "qos": qos,
        "retain": retain,
    }


def post(client, path, body, headers=None, environ=None, **kwargs):
    """POST like EMQX: JSON with its headers, from an address we do not trust, so the
    Bearer header is what lets it in."""
    return client.post(
        path,
        json=body,
        headers=EMQX_HEADERS if headers is None else headers,
        environ_base=UNTRUSTED if environ is None else environ,
        **kwargs,
    )


def decision(count_before: float, hook: str, result: str) -> float:
    """How many more decisions of this kind were counted since `count_before`."""
    return metrics.HOOK_DECISIONS.labels(hook, result)._value.get() - count_before


def counted(hook: str, result: str) -> float:
    """The current count of a hook decision."""
    return metrics.HOOK_DECISIONS.labels(hook, result)._value.get()


def test_constants_match_the_served_routes(app):
    """The paths and body fields the deployment tests import are the ones served."""
    adapter = app.url_map.bind("localhost")
    assert emqx_hooks.AUTHN_PATH == "/emqx/authn"
    assert emqx_hooks.AUTHZ_PATH == "/emqx/authz"
    assert emqx_hooks.AUTHN_BODY_FIELDS == ("clientid", "username", "password", "peerhost")
    assert emqx_hooks.AUTHZ_BODY_FIELDS == (
        "clientid",
        "username",
        "topic",
        "action",
        "qos",
        "retain",
    )
    for path in (emqx_hooks.AUTHN_PATH, emqx_hooks.AUTHZ_PATH, "/mqtt/auth"):
        endpoint, _ = adapter.match(path, method="POST")
        assert endpoint.startswith("emqx_hooks.")


# ---------------------------------------------------------------- authn


def test_device_allowed_with_attrs_expiry_and_acl(client, devices):
    """A master with an agent: the exact answer EMQX 5.8 expects."""
    master = devices.master()
    agent = devices.agent(master)
    token = devices.token(master)
    before = counted("emqx_authn", "allow")
    response = post(client, "/emqx/authn", authn_body(f"device_{master}", token, "esp-m"))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["result", "is_superuser", "client_attrs", "expire_at", "acl"]
    assert body["result"] == "allow"
    assert body["is_superuser"] is False
    assert body["client_attrs"] == {"role": "device", "kind": "master"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in body["client_attrs"].items())
    with client.application.app_context():
        assert body["expire_at"] == decode_token(token)["exp"]
    # Integer seconds in the future: milliseconds or a past value reject the connection.
    assert type(body["expire_at"]) is int
    assert time.time() < body["expire_at"] < 10**10
    for rule in body["acl"]:
        check_emqx_rule(rule)
    assert body["acl"] == [
        {"permission": "allow", "action": "all", "topic": f"eq device/{master}/ping"},
        {"permission": "allow", "action": "all", "topic": f"eq device/{master}/data"},
        {"permission": "allow", "action": "all", "topic": f"eq device/{agent}/master"},
        DENY_ALL,
    ]
    assert decision(before, "emqx_authn", "allow") == 1
    assert devices.sessions(master) == {"esp-m": 1}


def test_agent_allowed(client, devices):
    """An agent gets its three topics."""
    agent = devices.agent(devices.master())
    body = post(
        client, "/emqx/authn", authn_body(f"device_{agent}", devices.token(agent), "esp-a")
    ).get_json()
    assert body["client_attrs"] == {"role": "device", "kind": "agent"}
    assert [rule["topic"] for rule in body["acl"]] == [
        f"eq device/{agent}/ping",
        f"eq device/{agent}/data",
        f"eq device/{agent}/master",
        "#",
    ]


def test_service_account_allowed(client):
    """The service account: its role, its rules, no expiry."""
    body = post(client, "/emqx/authn", authn_body("iot-server", SECRET, "pinger-1")).get_json()
    assert body == {
        "result": "allow",
        "is_superuser": False,
        "client_attrs": {"role": "service"},
        "acl": [
            {"permission": "allow", "action": "all", "topic": "device/+/ping"},
            {"permission": "allow", "action": "subscribe", "topic": "device/+/data"},
            DENY_ALL,
        ],
    }
    for rule in body["acl"]:
        check_emqx_rule(rule)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("device_{master}", "not-a-token"),
        ("device_{master}", ""),  # EMQX renders an absent password as ""
        ("device_{master}", "${{password}}"),  # a placeholder EMQX could not fill
        ("device_{other}", "{token}"),  # someone else's token
        ("device_{unregistered}", "{unregistered_token}"),
        ("iot-server", "wrong"),
        ("iot-server", ""),
    ],
)
def test_bad_credentials_denied(client, devices, username, password):
    """Bad credentials for our usernames: 200 `deny`, nothing else."""
    uuids = {
        "master": devices.master(),
        "other": devices.master(),
        "unregistered": devices.master(registered=False),
    }
    values = {
        **uuids,
        "token": devices.token(uuids["master"]),
        "unregistered_token": devices.token(uuids["unregistered"]),
    }
    body = authn_body(username.format(**values), password.format(**values), "c")
    response = post(client, "/emqx/authn", body)
    assert (response.status_code, response.get_json()) == (200, {"result": "deny"})


@pytest.mark.parametrize("username", ["", "${username}", "alice", "dashboard-user", "device_x"])
def test_other_usernames_ignored(client, username):
    """Not a device, not the service: EMQX asks its next authenticator."""
    response = post(client, "/emqx/authn", authn_body(username, "pw", "c"))
    assert (response.status_code, response.get_json()) == (200, {"result": "ignore"})


def test_unknown_placeholders_are_harmless(client, devices):
    """EMQX sends an unknown placeholder literally; the login still stands on its token."""
    master = devices.master()
    body = authn_body(f"device_{master}", devices.token(master), "c", peerhost="${peername}")
    assert post(client, "/emqx/authn", body).get_json()["result"] == "allow"


def test_revoked_device_denied_at_connect(client, devices, runner):
    """After `flask devices revoke` the next CONNECT is refused."""
    master = devices.master()
    token = devices.token(master)
    assert post(client, "/emqx/authn", authn_body(f"device_{master}", token, "c")).get_json()[
        "result"
    ] == ("allow")
    result = runner.invoke(args=["devices", "revoke", master])
    assert result.exit_code == 0, result.output
    assert post(client, "/emqx/authn", authn_body(f"device_{master}", token, "c")).get_json() == {
        "result": "deny"
    }


# ---------------------------------------------------------------- hook callers


@pytest.mark.parametrize("path", ["/emqx/authn", "/emqx/authz", "/mqtt/auth"])
def test_untrusted_caller_without_secret_gets_403(client, path):
    """No header from outside the trusted networks: 403, no decision."""
    headers = {k: v for k, v in EMQX_HEADERS.items() if k != "Authorization"}
    response = post(client, path, authn_body("iot-server", SECRET, "c"), headers=headers)
    assert response.status_code == 403
    assert "result" not in response.get_json()


@pytest.mark.parametrize("path", ["/emqx/authn", "/emqx/authz"])
def test_wrong_secret_from_a_trusted_network_gets_403(client, path):
    """A wrong Bearer is refused even from loopback."""
    headers = {**EMQX_HEADERS, "Authorization": "Bearer nope"}
    response = post(
        client, path, authn_body("iot-server", SECRET, "c"), headers, {"REMOTE_ADDR": "127.0.0.1"}
    )
    assert response.status_code == 403


def test_trusted_network_without_header(client):
    """A broker on a trusted network may call without the header."""
    headers = {k: v for k, v in EMQX_HEADERS.items() if k != "Authorization"}
    response = post(
        client,
        "/emqx/authn",
        authn_body("iot-server", SECRET, "c"),
        headers,
        {"REMOTE_ADDR": "127.0.0.1"},
    )
    assert response.get_json()["result"] == "allow"


def test_proxied_callers_are_judged_by_their_origin(app_config, devices):
    """Behind one trusted proxy hop, a request relayed from outside is not 'loopback'."""
    from iot_server import create_app

    app = create_app({**app_config, "TRUSTED_PROXIES": 1})
    client = app.test_client()
    headers = {k: v for k, v in EMQX_HEADERS.items() if k != "Authorization"}
    relayed = {**headers, "X-Forwarded-For": "198.51.100.7"}
    local = {"REMOTE_ADDR": "127.0.0.1"}
    body = authn_body("iot-server", SECRET, "c")
    assert post(client, "/emqx/authn", body, relayed, local).status_code == 403
    inside = {**headers, "X-Forwarded-For": "127.0.0.1"}
    assert post(client, "/emqx/authn", body, inside, local).status_code == 200


def test_hooks_are_not_rate_limited(client, devices):
    """A broker is one client making every call: no 429, whatever the volume."""
    agent = devices.agent(devices.master())
    post(client, "/emqx/authn", authn_body(f"device_{agent}", devices.token(agent), "a"))
    body = authz_body(f"device_{agent}", "a", f"device/{agent}/ping")
    statuses = {post(client, "/emqx/authz", body).status_code for _ in range(260)}
    assert statuses == {200}


# ---------------------------------------------------------------- the seed's /mqtt/auth


def test_seed_authn_with_body_token(client, devices):
    """`token` = MQTT_SECRET_KEY in the body stands in for the header; same answers."""
    master = devices.master()
    body = {
        "clientid": "c",
        "username": f"device_{master}",
        "password": devices.token(master),
        "token": SECRET,
    }
    response = post(client, "/mqtt/auth", body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["result"] == "allow" and answer["client_attrs"]["kind"] == "master"
    assert answer["acl"][-1] == DENY_ALL
    body["password"] = "bad"
    assert post(client, "/mqtt/auth", body, headers={}).get_json() == {"result": "deny"}
    body["username"] = "stranger"
    assert post(client, "/mqtt/auth", body, headers={}).get_json() == {"result": "ignore"}


@pytest.mark.parametrize("token", ["wrong", "", 42, None])
def test_seed_authn_wrong_token_is_403(client, devices, token):
    """A wrong body token: 403, even from loopback."""
    body = {"clientid": "c", "username": "iot-server", "password": SECRET, "token": token}
    response = post(client, "/mqtt/auth", body, headers={}, environ={"REMOTE_ADDR": "127.0.0.1"})
    if token is None:  # no token at all: the ordinary trusted-network rule applies
        assert response.status_code == 200
    else:
        assert response.status_code == 403


# ---------------------------------------------------------------- authz


def connect(client, devices, uuid: str, clientid: str) -> None:
    """Authenticate the device as EMQX would at CONNECT."""
    body = authn_body(f"device_{uuid}", devices.token(uuid), clientid)
    assert post(client, "/emqx/authn", body).get_json()["result"] == "allow"


@pytest.mark.parametrize("action", ["publish", "subscribe"])
def test_authz_allows_own_topics(client, devices, action):
    """publish and subscribe on the device's topics, qos and retain as EMQX renders them."""
    master = devices.master()
    agent = devices.agent(master)
    connect(client, devices, master, "m")
    for topic in (f"device/{master}/ping", f"device/{master}/data", f"device/{agent}/master"):
        for qos, retain in (("0", "false"), ("1", "false"), ("2", "true")):
            body = authz_body(f"device_{master}", "m", topic, action, qos, retain)
            response = post(client, "/emqx/authz", body)
            assert (response.status_code, response.get_json()) == (200, {"result": "allow"})


@pytest.mark.parametrize(
    ("topic", "action", "clientid"),
    [
        ("device/#", "subscribe", "a"),
        ("device/+/ping", "subscribe", "a"),
        ("#", "subscribe", "a"),
        ("device/{master}/ping", "publish", "a"),
        ("device/{agent}/ping", "publish", "someone-else"),
        ("device/{agent}/ping", "all", "a"),
        ("device/{agent}/ping", "${action}", "a"),
        ("device/{agent}/ping", "", "a"),
        ("$SYS/brokers", "subscribe", "a"),
        ("", "publish", "a"),
    ],
)
def test_authz_denies(client, devices, topic, action, clientid):
    """Others' topics, wildcards, unknown actions, other sessions: 200 deny."""
    master = devices.master()
    agent = devices.agent(master)
    connect(client, devices, agent, "a")
    body = authz_body(f"device_{agent}", clientid, topic.format(master=master, agent=agent), action)
    response = post(client, "/emqx/authz", body)
    assert (response.status_code, response.get_json()) == (200, {"result": "deny"})


def test_authz_ignores_foreign_usernames(client):
    """Not ours: the next source (or no_match) decides."""
    response = post(client, "/emqx/authz", authz_body("dashboard", "c", "device/x/ping"))
    assert response.get_json() == {"result": "ignore"}


def test_authz_for_the_service(client):
    """EMQX authorizes `$share/g/device/+/ping` as `device/+/ping` (BROKERS.md)."""
    allow = authz_body("iot-server", "pinger", "device/+/ping", "subscribe")
    assert post(client, "/emqx/authz", allow).get_json() == {"result": "allow"}
    deny = authz_body("iot-server", "pinger", "device/#", "subscribe")
    assert post(client, "/emqx/authz", deny).get_json() == {"result": "deny"}


# ---------------------------------------------------------------- malformed input and failures


@pytest.mark.parametrize("path", ["/emqx/authn", "/emqx/authz", "/mqtt/auth"])
@pytest.mark.parametrize(
    "body",
    [
        [],
        "a string",
        {},
        {"username": 1, "password": 2, "clientid": 3, "topic": 4, "action": 5},
        {"username": None, "password": None, "clientid": None},
    ],
)
def test_malformed_json_is_denied(client, path, body):
    """Well-formed JSON of the wrong shape: the broker's deny, never a 5xx."""
    headers = {**EMQX_HEADERS}
    if path == "/mqtt/auth":
        body = {**body, "token": SECRET} if isinstance(body, dict) else body
        headers = {"content-type": "application/json"}
        environ = {"REMOTE_ADDR": "127.0.0.1"}
    else:
        environ = UNTRUSTED
    response = post(client, path, body, headers, environ)
    assert response.status_code == 200
    assert response.get_json() == {"result": "deny"}


@pytest.mark.parametrize("path", ["/emqx/authn", "/emqx/authz"])
@pytest.mark.parametrize("raw", [b"", b"{not json", b"\xff\xfe\x00", b"<html>"])
def test_garbage_is_a_json_400(client, path, raw):
    """A body that is not JSON: 400 in JSON, never HTML."""
    response = client.post(path, data=raw, headers=EMQX_HEADERS, environ_base=UNTRUSTED)
    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert response.get_json()["result"] == "deny"


def test_oversized_body_is_a_json_413(client):
    """Over 64 KB: the app's JSON 413."""
    body = authz_body("device_x", "c", "device/" + "x" * 70000 + "/ping")
    response = post(client, "/emqx/authz", body)
    assert response.status_code == 413
    assert response.get_json()["c"] == "TOO_LARGE"


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_other_methods_are_json_405(client, method):
    """Only POST is routed."""
    response = getattr(client, method)("/emqx/authn", headers=EMQX_HEADERS)
    assert response.status_code == 405
    assert response.get_json()["c"] == "METHOD_NOT_ALLOWED"


def test_database_down_denies_with_200(client, devices, monkeypatch):
    """EMQX treats 5xx as ignore, so an unreachable database answers 200 deny."""
    master = devices.master()
    token = devices.token(master)

    def unreachable(*args, **kwargs):
        raise OperationalError("SELECT", {}, ConnectionRefusedError("refused"))

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "connect", unreachable)
        authn = post(client, "/emqx/authn", authn_body(f"device_{master}", token, "c"))
        authz = post(
            client, "/emqx/authz", authz_body(f"device_{master}", "c", f"device/{master}/ping")
        )
    assert (authn.status_code, authn.get_json()) == (200, {"result": "deny"})
    assert (authz.status_code, authz.get_json()) == (200, {"result": "deny"})
    # Not cached: the same login succeeds once the database answers again.
    authn = post(client, "/emqx/authn", authn_body(f"device_{master}", token, "c"))
    assert authn.get_json()["result"] == "allow"


@pytest.mark.parametrize("field", ["username", "password", "clientid", "topic"])
def test_lone_surrogates_are_denied_not_crashed(client, devices, field):
    """JSON can carry `\\ud800`, which no UTF-8 encoder accepts: a deny, never a 500."""
    import json

    master = devices.master()
    values = {
        "username": f"device_{master}",
        "password": devices.token(master),
        "clientid": "c",
        "topic": f"device/{master}/ping",
    }
    values[field] = "\ud800" if field != "username" else f"device_{master}\ud800"
    calls = [("/emqx/authz", authz_body(values["username"], values["clientid"], values["topic"]))]
    if field != "topic":
        login = authn_body(values["username"], values["password"], values["clientid"])
        calls.append(("/emqx/authn", login))
    for path, body in calls:
        response = client.post(
            path, data=json.dumps(body), headers=EMQX_HEADERS, environ_base=UNTRUSTED
        )
        assert response.status_code == 200
        assert response.get_json()["result"] in ("deny", "ignore")
