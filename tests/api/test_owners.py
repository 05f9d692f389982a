"""Owner accounts: POST /auth/users/register and /auth/users/login, validation, rate limit."""

import itertools
import json

import pytest
from flask_jwt_extended import decode_token

from iot_server.extensions import db
from iot_server.models import Owner

PASSWORD = "correct horse battery"
_addresses = (f"10.1.{n // 250}.{n % 250 + 1}" for n in itertools.count())


def post(client, url, body, ip=None, **kwargs):
    """POST a JSON body from a fresh client address, so the /auth/* limit stays out of the way."""
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(
        url,
        data=data,
        content_type=kwargs.pop("content_type", "application/json"),
        environ_base={"REMOTE_ADDR": ip or next(_addresses)},
        **kwargs,
    )


def register(client, username="alice", password=PASSWORD, **kwargs):
    """Register an owner."""
    return post(
        client, "/auth/users/register", {"username": username, "password": password}, **kwargs
    )


def login(client, username="alice", password=PASSWORD, **kwargs):
    """Log an owner in."""
    return post(client, "/auth/users/login", {"username": username, "password": password}, **kwargs)


def test_register_then_login_gives_an_owner_token(app, client):
    response = register(client)
    assert response.status_code == 201
    assert response.get_json() == {"c": "OK"}
    response = login(client)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"c", "t"} and body["c"] == "OK"
    with app.app_context():
        claims = decode_token(body["t"])
        owner = db.session.execute(db.select(Owner).filter_by(username="alice")).scalar_one()
    assert claims["role"] == "owner"
    assert claims["sub"] == str(owner.id)
    assert claims["exp"] - claims["iat"] == app.config["OWNER_TOKEN_TTL"]


def test_password_is_stored_as_argon2id(app, client):
    register(client)
    with app.app_context():
        owner = db.session.execute(db.select(Owner)).scalar_one()
    assert owner.password_hash.startswith("$argon2id$")
    assert PASSWORD not in owner.password_hash


def test_username_is_case_insensitive_and_stored_lowercase(app, client):
    assert register(client, "Alice.Smith").status_code == 201
    assert register(client, "ALICE.SMITH").status_code == 409
    assert login(client, "aLiCe.SmItH").status_code == 200
    with app.app_context():
        assert db.session.execute(db.select(Owner.username)).scalar_one() == "alice.smith"


def test_taken_username_is_conflict(client):
    register(client)
    response = register(client, password="another long password")
    assert response.status_code == 409
    assert response.get_json()["c"] == "CONFLICT"


@pytest.mark.parametrize(
    "username",
    ["ab", "a" * 65, "ali ce", "alice!", "álice", "\u212aelvin", "", "alice\n", "al/ice"],
)
def test_malformed_username_is_bad_request(client, username):
    response = register(client, username)
    assert response.status_code == 400
    body = response.get_json()
    assert body["c"] == "BAD_REQUEST" and "username" in body["error"]


@pytest.mark.parametrize("username", ["abc", "a" * 64, "a_b.c-d", "0123"])
def test_wellformed_usernames_are_accepted(client, username):
    assert register(client, username).status_code == 201


@pytest.mark.parametrize("password", ["", "x" * 11, "x" * 257, "long enough\x00password"])
def test_bad_password_is_bad_request(client, password):
    response = register(client, password=password)
    assert response.status_code == 400
    assert "password" in response.get_json()["error"]


@pytest.mark.parametrize("password", ["xy" * 6, "xy" * 128, "pässwörd ☃ long enough"])
def test_password_bounds_are_inclusive(client, password):
    assert register(client, password=password).status_code == 201
    assert login(client, password=password).status_code == 200


@pytest.mark.parametrize("url", ["/auth/users/register", "/auth/users/login"])
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("not json", "JSON object"),
        ("", "JSON object"),
        ("[]", "JSON object"),
        ("null", "JSON object"),
        ('"alice"', "JSON object"),
        ({"username": "alice"}, "missing field(s): password"),
        ({}, "missing field(s): username, password"),
        ({"username": "alice", "password": PASSWORD, "admin": True}, "unknown field(s): admin"),
        ({"username": 5, "password": PASSWORD}, "username must be a string"),
        ({"username": "alice", "password": None}, "password must be a string"),
        ({"username": ["alice"], "password": PASSWORD}, "username must be a string"),
    ],
)
def test_malformed_body_is_bad_request(client, url, body, needle):
    response = post(client, url, body)
    assert response.status_code == 400
    payload = response.get_json()
    assert payload["c"] == "BAD_REQUEST"
    assert needle in payload["error"]


def test_body_without_json_content_type_is_still_parsed(client):
    response = post(
        client,
        "/auth/users/register",
        {"username": "alice", "password": PASSWORD},
        content_type="text/plain",
    )
    assert response.status_code == 201


def test_wrong_password_and_unknown_user_answer_alike(client):
    register(client)
    wrong = login(client, password="wrong password here")
    unknown = login(client, "nobody")
    malformed_name = login(client, "x")
    for response in (wrong, unknown, malformed_name):
        assert response.status_code == 403
    assert wrong.get_json() == unknown.get_json() == malformed_name.get_json()
    assert wrong.get_json()["c"] == "FORBIDDEN"


def test_login_with_empty_strings_is_forbidden(client):
    register(client)
    assert login(client, "", "").status_code == 403


def test_oversized_body_is_too_large(client):
    response = post(client, "/auth/users/register", {"username": "alice", "password": "x" * 70_000})
    assert response.status_code == 413
    assert response.get_json()["c"] == "TOO_LARGE"


@pytest.mark.parametrize("url", ["/auth/users/register", "/auth/users/login"])
def test_get_is_method_not_allowed(client, url):
    response = client.get(url)
    assert response.status_code == 405
    assert response.get_json()["c"] == "METHOD_NOT_ALLOWED"
    assert "POST" in response.headers["Allow"]


def test_login_attempts_share_the_auth_rate_limit(client):
    register(client)
    ip = "10.9.9.9"
    statuses = [login(client, password="wrong password here", ip=ip).status_code for _ in range(5)]
    assert statuses == [403] * 5
    # Even the right password is refused now, and so is device registration from that IP.
    limited = login(client, ip=ip)
    assert limited.status_code == 429
    assert limited.get_json()["c"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1
    device = client.get("/auth/devices/request?uuid=x", environ_base={"REMOTE_ADDR": ip})
    assert device.status_code == 429
    # Another address has its own bucket.
    assert login(client).status_code == 200


def test_registration_is_rate_limited_too(client):
    ip = "10.9.9.10"
    statuses = [register(client, f"user{n}", ip=ip).status_code for n in range(6)]
    assert statuses == [201] * 5 + [429]


@pytest.fixture
def outage_app():
    """An app whose database is a PostgreSQL port nobody listens on."""
    from conftest import free_port

    from iot_server import create_app

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    return create_app({"SQLALCHEMY_DATABASE_URI": url})


@pytest.mark.parametrize("url", ["/auth/users/register", "/auth/users/login"])
def test_database_outage_is_503(outage_app, url):
    response = post(outage_app.test_client(), url, {"username": "alice", "password": PASSWORD})
    assert response.status_code == 503
    assert response.get_json()["c"] == "ERROR"
