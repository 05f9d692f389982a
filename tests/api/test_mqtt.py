"""GET /mqtt: the broker address for a device with a valid, current token."""

import time

import jwt
import pytest
from conftest import MASTER_SECRET

ADDRESS = "broker.example.test:1883"


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MQTT_HOST": ADDRESS}


def get_mqtt(client, token):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get("/mqtt", headers=headers)


def test_registered_device_gets_the_broker_address(client, devices):
    token = devices.token(devices.master())
    response = get_mqtt(client, token)
    assert response.status_code == 200
    assert response.get_json() == {"c": "OK", "ip": ADDRESS}


def test_agent_gets_the_broker_address(client, devices):
    agent = devices.agent(master=devices.master())
    assert get_mqtt(client, devices.token(agent)).status_code == 200


def forged(app, **claims):
    base = {
        "sub": claims.pop("sub", "x"),
        "role": "device",
        "kind": "master",
        "ver": 1,
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
        "type": "access",
        "fresh": False,
        "jti": "j",
    }
    base.update(claims)
    return base


@pytest.mark.parametrize(
    "make_token",
    [
        lambda app, uuid: None,
        lambda app, uuid: "",
        lambda app, uuid: "garbage",
        lambda app, uuid: "a.b.c",
        # alg none
        lambda app, uuid: jwt.encode(forged(app, sub=uuid), None, algorithm="none"),
        # another algorithm with the same key
        lambda app, uuid: jwt.encode(
            forged(app, sub=uuid), app.config["JWT_SECRET"], algorithm="HS512"
        ),
        # wrong key
        lambda app, uuid: jwt.encode(
            forged(app, sub=uuid), "not-the-key-but-long-enough-000000", algorithm="HS256"
        ),
        # expired (beyond the 30 s of clock-skew leeway)
        lambda app, uuid: jwt.encode(
            forged(app, sub=uuid, exp=int(time.time()) - 40),
            app.config["JWT_SECRET"],
            algorithm="HS256",
        ),
        # owner role
        lambda app, uuid: jwt.encode(
            forged(app, sub=uuid, role="owner"), app.config["JWT_SECRET"], algorithm="HS256"
        ),
        # no version
        lambda app, uuid: jwt.encode(
            {k: v for k, v in forged(app, sub=uuid).items() if k != "ver"},
            app.config["JWT_SECRET"],
            algorithm="HS256",
        ),
    ],
    ids=[
        "missing",
        "empty",
        "garbage",
        "dots",
        "alg-none",
        "hs512",
        "wrong-key",
        "expired",
        "owner-role",
        "no-ver",
    ],
)
def test_bad_tokens_are_forbidden(app, client, devices, make_token):
    uuid = devices.master()
    response = get_mqtt(client, make_token(app, uuid))
    assert response.status_code == 403
    assert response.get_json()["c"] == "FORBIDDEN"


def test_well_formed_forged_token_passes_only_with_the_real_key(app, client, devices):
    uuid = devices.master()
    token = jwt.encode(forged(app, sub=uuid), app.config["JWT_SECRET"], algorithm="HS256")
    assert get_mqtt(client, token).status_code == 200


def test_registration_secret_is_not_a_token(client):
    assert get_mqtt(client, MASTER_SECRET).status_code == 403


def test_revoked_token_is_forbidden(client, devices, runner):
    uuid = devices.master()
    token = devices.token(uuid)
    assert runner.invoke(args=["devices", "revoke", uuid]).exit_code == 0
    assert get_mqtt(client, token).status_code == 403
    assert get_mqtt(client, devices.token(uuid)).status_code == 200


def test_disabled_device_is_forbidden(client, devices, runner):
    uuid = devices.master()
    token = devices.token(uuid)
    runner.invoke(args=["devices", "disable", uuid])
    assert get_mqtt(client, token).status_code == 403


def test_unregistered_device_is_forbidden(app, client, devices):
    from iot_server.extensions import db
    from iot_server.models import Device

    agent = devices.agent(master=devices.master())
    token = devices.token(agent)
    with app.app_context():
        db.session.get(Device, agent).master_uuid = None
        db.session.commit()
    assert get_mqtt(client, token).status_code == 403


@pytest.mark.parametrize(
    ("iat", "exp", "accepted"),
    [
        (2, 60, True),  # the review's finding: `iat` 2 s ahead was refused
        (25, 60, True),
        (45, 60, False),  # beyond the leeway
        (-20, -10, True),  # expired 10 s ago: within the leeway
        (-20, -40, False),
    ],
)
def test_tokens_get_30_seconds_of_clock_skew_leeway(app, client, devices, iat, exp, accepted):
    """JWT_DECODE_LEEWAY: another instance's clock may be a little ahead or behind."""
    uuid = devices.master()
    now = int(time.time())
    claims = forged(app, sub=uuid, iat=now + iat, exp=now + exp)
    token = jwt.encode(claims, app.config["JWT_SECRET"], algorithm="HS256")
    assert get_mqtt(client, token).status_code == (200 if accepted else 403)
