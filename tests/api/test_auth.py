"""GET /auth/devices/request: every result code, bad input, and the secret-first rule."""

import pytest
from conftest import AGENT_SECRET, MASTER_SECRET, new_uuid, request_token

URL = "/auth/devices/request"


def test_unknown_master_is_created_and_not_registered(client, devices):
    uuid = new_uuid()
    response = request_token(client, uuid)
    assert response.status_code == 401
    assert response.get_json() == {
        "c": "NOT_REGISTERED",
        "error": "device not yet claimed by an owner",
    }
    assert devices.get(uuid).kind == "master"


def test_unknown_agent_is_created_with_agent_kind(client, devices):
    uuid = new_uuid()
    assert request_token(client, uuid, AGENT_SECRET).status_code == 401
    assert devices.get(uuid).kind == "agent"


def test_claimed_master_gets_a_token(client, devices):
    uuid = devices.master()
    response = request_token(client, uuid)
    assert response.status_code == 200
    body = response.get_json()
    assert body["c"] == "OK" and body["t"].count(".") == 2


def test_linked_agent_gets_a_token(client, devices):
    agent = devices.agent(master=devices.master())
    assert request_token(client, agent, AGENT_SECRET).status_code == 200


def test_uppercase_uuid_is_normalised(client, devices):
    uuid = devices.master()
    response = request_token(client, uuid.upper())
    assert response.status_code == 200


@pytest.mark.parametrize("secret", [None, "", "wrong", MASTER_SECRET + "x", "Bearer"])
def test_bad_secret_is_forbidden_whatever_the_uuid(client, secret):
    for uuid in (new_uuid(), "not-a-uuid", None):
        response = request_token(client, uuid, secret)
        assert response.status_code == 403
        assert response.get_json()["c"] == "FORBIDDEN"


def test_secret_of_the_other_kind_is_forbidden(client, devices):
    uuid = devices.master()
    response = request_token(client, uuid, AGENT_SECRET)
    assert response.status_code == 403
    assert devices.get(uuid).kind == "master"


def test_disabled_device_is_forbidden(app, client, devices, runner):
    uuid = devices.master()
    assert runner.invoke(args=["devices", "disable", uuid]).exit_code == 0
    assert request_token(client, uuid).status_code == 403


@pytest.mark.parametrize(
    "uuid",
    [
        None,
        "",
        "not-a-uuid",
        "0123456789abcdef0123456789abcdef",
        "{01234567-89ab-cdef-0123-456789abcdef}",
        "urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
        "01234567-89ab-cdef-0123-456789abcdeg",
        "01234567-89ab-cdef-0123-456789abcdef%0a",
        "01234567-89ab-cdef-0123-456789abcdef%00",
        "%27%20OR%201=1--",
        "x" * 5000,
    ],
)
def test_malformed_uuid_is_bad_request(client, uuid):
    response = request_token(client, uuid)
    assert response.status_code == 400
    assert response.get_json()["c"] == "BAD_REQUEST"


def test_token_claims(app, client, devices):
    from flask_jwt_extended import decode_token

    uuid = devices.master()
    token = request_token(client, uuid).get_json()["t"]
    with app.app_context():
        claims = decode_token(token)
    assert claims["sub"] == uuid
    assert claims["role"] == "device"
    assert claims["kind"] == "master"
    assert claims["ver"] == 1
    assert claims["exp"] - claims["iat"] == app.config["DEVICE_TOKEN_TTL"]
