"""Nobody gets in (issue 8): forged, foreign and stale tokens everywhere a token is read;
spoofed client addresses against the rate limits; hook callers without the secret from
outside the trusted networks; registration secrets compared in constant time.

Every refusal is checked against a control request that the same route accepts with the
genuine credential, so a route that refuses everything would fail here.
"""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import requests
from conftest import (
    AGENT_SECRET,
    MASTER_SECRET,
    MQTT_SECRET,
    GunicornServer,
    RedisServer,
    new_uuid,
    server_env,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask_jwt_extended import create_access_token
from reliability_kit import figure, seed_fleet
from reliability_kit import snapshot as database_snapshot

from iot_server import devices as devices_service
from iot_server import tokens
from iot_server.extensions import db
from iot_server.models import Device, Owner

JWT_SECRET = "test-jwt-secret-of-a-sensible-length-0123456789"
HOOK_BEARER = {"Authorization": f"Bearer {MQTT_SECRET}"}


# ---------------------------------------------------------------- forged tokens


def claims_of(token: str) -> dict:
    """A token's claims, read without checking it (to re-sign them another way)."""
    return jwt.decode(token, options={"verify_signature": False})


def rsa_private_key() -> bytes:
    """A fresh RSA key in PEM (for RS256 tokens the server must not accept)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def tampered(token: str, **changes) -> str:
    """The token with its payload changed and its original signature kept."""
    header, _, signature = token.split(".")
    payload = jwt.utils.base64url_encode(
        jwt.api_jws.json.dumps({**claims_of(token), **changes}, separators=(",", ":")).encode()
    ).decode()
    return f"{header}.{payload}.{signature}"


def resigned(token: str, key, algorithm: str, **changes) -> str:
    """The token's claims (changed) signed with another key or algorithm."""
    return jwt.encode({**claims_of(token), **changes}, key, algorithm=algorithm)


EXPIRED = {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}

#: name → how to turn the genuine token into the forgery (the `world` gives the others).
FORGERIES = {
    "alg_none": lambda w, t: resigned(t, None, "none"),
    "alg_HS512_right_key": lambda w, t: resigned(t, JWT_SECRET, "HS512"),
    "alg_HS384_right_key": lambda w, t: resigned(t, JWT_SECRET, "HS384"),
    "alg_RS256": lambda w, t: resigned(t, rsa_private_key(), "RS256"),
    "wrong_key": lambda w, t: resigned(
        t, "another-secret-of-a-sensible-length-0123456789", "HS256"
    ),
    "expired": lambda w, t: resigned(t, JWT_SECRET, "HS256", **EXPIRED),
    "tampered_payload": lambda w, t: tampered(w.get("tamper_base", t), sub=w["victim_sub"]),
    "unsigned_segment_only": lambda w, t: t.rsplit(".", 1)[0] + ".",
    "registration_secret": lambda w, t: MASTER_SECRET,
    "mqtt_secret": lambda w, t: MQTT_SECRET,
    "garbage": lambda w, t: "not.a.jwt",
}
#: Forgeries only a device credential can suffer.
DEVICE_ONLY = {
    "owner_token": lambda w, t: w["owner_token"],
    "token_of_another_uuid": lambda w, t: w["agent_token"],
    "revoked": lambda w, t: w["revoked_token"],
}
#: Forgeries only an owner credential can suffer.
OWNER_ONLY = {
    "device_token": lambda w, t: w["device_token"],
    "token_of_another_role": lambda w, t: resigned(t, JWT_SECRET, "HS256", role="device"),
}


@pytest.fixture
def world(app, devices) -> dict:
    """Alice, her master with an agent, and their genuine tokens (one revoked since)."""
    devices.owner("alice")
    devices.owner("mallory")
    master = devices.master(owner="alice")
    agent = devices.agent(master)
    revoked_token = devices.token(master)
    with app.app_context():
        devices_service.revoke(db.session.get(Device, master))
        alice = db.session.execute(db.select(Owner).filter_by(username="alice")).scalar_one()
        mallory = db.session.execute(db.select(Owner).filter_by(username="mallory")).scalar_one()
        owner_token = tokens.issue_owner_token(alice)
        victim = str(mallory.id)
    return {
        "master": master,
        "agent": agent,
        "device_token": devices.token(master),
        "agent_token": devices.token(agent),
        "revoked_token": revoked_token,
        "owner_token": owner_token,
        "victim_sub": victim,
    }


def device_endpoints(world: dict, token: str) -> list[tuple[str, str, dict, object]]:
    """Every place a device token is read: (name, method+path, request kwargs, refused?)."""
    login = {"username": f"device_{world['master']}", "password": token, "clientid": "esp-1"}
    return [
        ("GET /mqtt", "GET /mqtt", {"headers": {"Authorization": f"Bearer {token}"}}, "c"),
        ("emqx authn", "POST /emqx/authn", {"json": login, "headers": HOOK_BEARER}, "result"),
        ("seed authn", "POST /mqtt/auth", {"json": {**login, "token": MQTT_SECRET}}, "result"),
        ("go-auth user json", "POST /mosquitto/user", {"json": login}, "ok"),
        ("go-auth user form", "POST /mosquitto/user", {"data": login}, "ok"),
    ]


def accepted(shape: str, response) -> bool:
    """The route said yes, in its own format."""
    body = response.get_json(silent=True) or {}
    if shape == "c":
        return response.status_code == 200 and body.get("c") == "OK"
    if shape == "result":
        return response.status_code == 200 and body.get("result") == "allow"
    return response.status_code == 200 and body.get("ok") is True


def refused(shape: str, response) -> bool:
    """The route said no, in its own format (never a 5xx)."""
    body = response.get_json(silent=True) or {}
    if shape == "c":
        return response.status_code == 403 and body.get("c") == "FORBIDDEN"
    if shape == "result":
        return response.status_code == 200 and body == {"result": "deny"}
    return response.status_code == 403 and body.get("ok") is False


def send(client, route: str, kwargs: dict):
    """Send `METHOD /path` through the test client."""
    method, path = route.split(" ", 1)
    return client.open(path, method=method, **kwargs)


def snapshot(app) -> dict:
    """Every row of the test database."""
    return database_snapshot(app.config["SQLALCHEMY_DATABASE_URI"])


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("forgery", sorted({**FORGERIES, **DEVICE_ONLY}))
def test_forged_device_credentials_are_refused_everywhere(app, client, world, forgery):
    """Each forgery as the device's token at /mqtt and at every login hook: refused, and no
    session recorded; the genuine token passes the same routes."""
    genuine = world["device_token"]
    # Tampering: the agent's genuine token, its subject changed to the master.
    tamper = {**world, "tamper_base": world["agent_token"], "victim_sub": world["master"]}
    forged = {**FORGERIES, **DEVICE_ONLY}[forgery](tamper, genuine)
    assert forged != genuine
    before = snapshot(app)
    for name, route, kwargs, shape in device_endpoints(world, forged):
        if forgery == "token_of_another_uuid" and route == "GET /mqtt":
            continue  # over HTTP it simply is the other device's own valid token
        assert refused(shape, send(client, route, kwargs)), (forgery, name)
    assert snapshot(app) == before
    for name, route, kwargs, shape in device_endpoints(world, genuine):
        assert accepted(shape, send(client, route, kwargs)), ("genuine", name)


def owner_routes(app, world: dict) -> list[tuple[str, str]]:
    """Every owner route the app serves (from its URL map), with Alice's devices filled in."""
    values = {"uuid": world["master"], "master": world["master"], "agent": world["agent"]}
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("owner_devices."):
            path = rule.rule
            for name, value in values.items():
                path = path.replace(f"<{name}>", value)
            routes += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("forgery", sorted({**FORGERIES, **OWNER_ONLY}))
def test_forged_owner_credentials_are_refused_on_every_owner_route(app, client, world, forgery):
    """Each forgery as Alice's token on every owner route: 403, nothing changed; the genuine
    token is not refused by the same routes."""
    genuine = world["owner_token"]
    forged = {**FORGERIES, **OWNER_ONLY}[forgery](world, genuine)
    routes = owner_routes(app, world)
    assert len(routes) >= 8
    before = snapshot(app)
    for method, path in routes:
        response = client.open(
            path, method=method, json={"name": "x"}, headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 403, (forgery, method, path, response.get_json())
        assert response.get_json()["c"] == "FORBIDDEN"
    assert snapshot(app) == before
    for method, path in routes:
        response = client.open(
            path, method=method, json={"name": "x"}, headers={"Authorization": f"Bearer {genuine}"}
        )
        assert response.status_code not in (403, 500), (method, path, response.get_json())


@pytest.mark.parametrize(
    "credential", ["device_token", "owner_token", "revoked_token", "mqtt_secret", "none"]
)
def test_tokens_are_not_registration_secrets(app, client, world, credential):
    """Only the two registration secrets register: any token, or the MQTT secret, is 403
    and creates no device."""
    secret = {"mqtt_secret": MQTT_SECRET, "none": ""}.get(credential)
    secret = world[credential] if secret is None else secret
    before = snapshot(app)
    response = client.get(
        f"/auth/devices/request?uuid={new_uuid()}", headers={"Authorization": f"Bearer {secret}"}
    )
    assert (response.status_code, response.get_json()["c"]) == (403, "FORBIDDEN")
    assert snapshot(app) == before


# ---------------------------------------------------------------- constant-time secrets


@pytest.fixture
def compare_digest_calls(monkeypatch) -> list[tuple[bytes, bytes]]:
    """Every `hmac.compare_digest` call while the test runs (a spy: it still compares)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


@pytest.mark.parametrize(
    "given",
    [
        MASTER_SECRET,
        AGENT_SECRET,
        MASTER_SECRET[:-1] + "X",  # right length, last byte wrong
        "X" + MASTER_SECRET[1:],  # right length, first byte wrong
        MASTER_SECRET + "-longer",
        "t",
        "",
    ],
)
def test_registration_secret_is_compared_in_constant_time_against_both(
    client, compare_digest_calls, given
):
    """Whatever is presented, both secrets are compared with `hmac.compare_digest`, each
    exactly once, and nothing else decides: a near miss costs what a far miss costs."""
    client.get(
        f"/auth/devices/request?uuid={new_uuid()}", headers={"Authorization": f"Bearer {given}"}
    )
    secrets = {MASTER_SECRET.encode(), AGENT_SECRET.encode()}
    compared = sorted(b for a, b in compare_digest_calls if b in secrets)
    assert compared == sorted(secrets)
    assert all(a == given.encode() for a, b in compare_digest_calls if b in secrets)


@pytest.mark.parametrize("given", [MQTT_SECRET, MQTT_SECRET[:-1] + "X", "x", ""])
def test_hook_secret_is_compared_in_constant_time(client, compare_digest_calls, given):
    """The hooks' Bearer secret goes through `hmac.compare_digest` too."""
    response = client.post(
        "/emqx/authn",
        json={"username": "x", "password": "y", "clientid": "z"},
        headers={"Authorization": f"Bearer {given}"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert (given.encode(), MQTT_SECRET.encode()) in compare_digest_calls
    assert response.status_code == (200 if given == MQTT_SECRET else 403)


def test_kind_for_secret_never_short_circuits(app, compare_digest_calls):
    """The service function itself: two comparisons per call, for a match and a miss."""
    with app.test_request_context():
        for given, kind in [(MASTER_SECRET, "master"), (AGENT_SECRET, "agent"), ("nope", None)]:
            compare_digest_calls.clear()
            assert devices_service.kind_for_secret(given) == kind
            assert len(compare_digest_calls) == 2


# ---------------------------------------------------------------- gunicorn: spoofing, hooks


HARDENED_LIMIT = 5


@pytest.fixture(scope="module")
def hardened(server_database, tmp_path_factory):
    """gunicorn (2 workers) with its limiter on a private Redis, a tight rate limit, and
    loopback outside HOOK_TRUSTED_NETWORKS (so this test client is an outsider)."""
    import shutil

    from conftest import service_unavailable

    if shutil.which("redis-server") is None:
        service_unavailable("the redis-server binary")
    redis = RedisServer().start()
    env = server_env(
        server_database,
        RATELIMIT_STORAGE_URI=redis.url,
        RATELIMIT_AUTH=f"{HARDENED_LIMIT} per 60 seconds",
        RATELIMIT_DEFAULT=f"{HARDENED_LIMIT} per 60 seconds",
        TRUSTED_PROXIES="0",
        HOOK_TRUSTED_NETWORKS="192.0.2.0/24",
    )
    server = GunicornServer(env, tmp_path_factory.mktemp("hardened"), workers=2).start()
    device = seed_fleet(server_database, masters=1)[0]
    yield server, redis, device
    server.stop()
    redis.kill()


#: Ways a client may claim another address. With TRUSTED_PROXIES=0 none may count.
SPOOFS = [
    lambda i: {"X-Forwarded-For": f"198.51.100.{i}"},
    lambda i: {"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.{i}"},
    lambda i: {"X-Real-IP": f"198.51.100.{i}"},
    lambda i: {"Forwarded": f"for=198.51.100.{i};proto=https"},
    lambda i: {"True-Client-IP": f"198.51.100.{i}"},
    lambda i: {"CF-Connecting-IP": f"198.51.100.{i}"},
    lambda i: {"X-Client-IP": f"198.51.100.{i}", "X-Forwarded-Proto": "https"},
    lambda i: {"X-Forwarded-For": "127.0.0.1"},
]


@pytest.mark.parametrize("route", ["registration", "default"])
def test_spoofed_client_addresses_do_not_escape_the_rate_limit(hardened, route):
    """Against gunicorn with TRUSTED_PROXIES=0: every request claims another address in
    another header, and still only the first LIMIT in the window pass."""
    server, redis, device = hardened
    redis.client().flushall()
    if route == "registration":
        path, auth = f"/auth/devices/request?uuid={device.uuid}", MASTER_SECRET
    else:
        path, auth = "/mqtt", device.token
    statuses = []
    for i in range(3 * HARDENED_LIMIT):
        headers = {"Authorization": f"Bearer {auth}", **SPOOFS[i % len(SPOOFS)](i + 1)}
        response = requests.get(server.url + path, headers=headers, timeout=10)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["c"] == "RATE_LIMITED"
            assert int(response.headers["Retry-After"]) > 0
    figure(f"spoof_{route}", requests=len(statuses), passed=statuses.count(200))
    assert statuses == [200] * HARDENED_LIMIT + [429] * (2 * HARDENED_LIMIT)


def hook_routes() -> list[str]:
    """Every broker hook the app serves (from its URL map)."""
    from iot_server import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    return sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[0] in ("emqx_hooks", "mosquitto_hooks")
    )


#: Caller credentials that are not `Bearer MQTT_SECRET_KEY`, with spoofed origins.
OUTSIDERS = {
    "no header": {},
    "wrong bearer": {"Authorization": "Bearer not-the-secret"},
    "empty bearer": {"Authorization": "Bearer "},
    "secret without scheme": {"Authorization": MQTT_SECRET},
    "secret as basic": {"Authorization": f"Basic {MQTT_SECRET}"},
    "secret plus suffix": {"Authorization": f"Bearer {MQTT_SECRET}x"},
    "secret prefix": {"Authorization": f"Bearer {MQTT_SECRET[:-1]}"},
    "spoofed trusted xff": {"X-Forwarded-For": "192.0.2.10"},
    "spoofed loopback xff": {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "::1"},
    "spoofed trusted forwarded": {"Forwarded": "for=192.0.2.10", "X-Real-IP": "192.0.2.10"},
}


def test_hook_callers_without_the_secret_from_outside_are_refused(hardened):
    """Every hook × every outsider: 403 and no decision, no session written; the same
    calls with the secret header get their decision."""
    server, _, device = hardened
    login = {"username": device.username, "password": device.token, "clientid": device.clientid}
    body = {**login, "topic": f"device/{device.uuid}/ping", "action": "publish", "acc": 2}
    routes = hook_routes()
    assert len(routes) >= 6
    before = database_snapshot(server.env["DATABASE_URL"])
    refusals = 0
    for path in routes:
        for name, headers in OUTSIDERS.items():
            response = requests.post(server.url + path, json=body, headers=headers, timeout=10)
            answer = response.json()
            assert response.status_code == 403, (path, name, answer)
            assert answer.get("error") == "hook caller not trusted", (path, name, answer)
            assert "result" not in answer and answer.get("ok") is not True
            refusals += 1
    assert database_snapshot(server.env["DATABASE_URL"]) == before
    for path in routes:
        response = requests.post(server.url + path, json=body, headers=HOOK_BEARER, timeout=10)
        assert response.json().get("error") != "hook caller not trusted", path
    figure("hook_outsiders", routes=len(routes), variants=len(OUTSIDERS), refused=refusals)


def test_seed_authn_body_token_must_be_the_secret(hardened):
    """`/mqtt/auth` takes the secret in the body: a wrong one is refused from anywhere."""
    server, _, device = hardened
    login = {"username": device.username, "password": device.token, "clientid": device.clientid}
    for token in ["", "wrong", MQTT_SECRET[:-1], MQTT_SECRET.upper(), None]:
        body = {**login, "token": token} if token is not None else login
        response = requests.post(server.url + "/mqtt/auth", json=body, timeout=10)
        assert response.status_code == 403, (token, response.text)
    response = requests.post(
        server.url + "/mqtt/auth", json={**login, "token": MQTT_SECRET}, timeout=10
    )
    assert response.json()["result"] == "allow"


def test_in_process_untrusted_address_matrix(client, world):
    """The same outsider matrix in-process on both databases, from a public address."""
    login = {"username": f"device_{world['master']}", "password": world["device_token"]}
    body = {**login, "clientid": "esp-1", "topic": "x", "action": "publish", "acc": 2}
    for path in hook_routes():
        for name, headers in OUTSIDERS.items():
            response = client.post(
                path, json=body, headers=headers, environ_base={"REMOTE_ADDR": "203.0.113.9"}
            )
            assert response.status_code == 403, (path, name)
            assert response.get_json()["error"] == "hook caller not trusted", (path, name)


def test_expired_token_is_refused_even_within_the_token_cache(app, client, world):
    """A token cached by a successful login is still refused once it has expired."""
    app.config["JWT_DECODE_LEEWAY"] = 0  # no clock-skew grace: expiry is the point here
    with app.app_context():
        device = db.session.get(Device, world["master"])
        short = create_access_token(
            identity=device.uuid,
            additional_claims={"role": "device", "kind": device.kind, "ver": device.token_version},
            expires_delta=timedelta(seconds=1),
        )
    login = {"username": f"device_{world['master']}", "password": short, "clientid": "esp-1"}
    first = client.post("/emqx/authn", json=login, headers=HOOK_BEARER)
    assert first.get_json()["result"] == "allow"
    expires = datetime.fromtimestamp(claims_of(short)["exp"], UTC)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.1)
    second = client.post("/emqx/authn", json=login, headers=HOOK_BEARER)
    assert second.get_json() == {"result": "deny"}
