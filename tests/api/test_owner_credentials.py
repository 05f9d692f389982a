"""Owner credentials: token versions, logout, password change, disable, the CLI, password
rules, login floods (hashing slots, failed logins per username, IPv6 /64 buckets)."""

from __future__ import annotations

import itertools
import json
import threading

import pytest
from argon2 import PasswordHasher
from flask_jwt_extended import decode_token

from iot_server import owners
from iot_server.extensions import db, rate_limit_key
from iot_server.models import Owner

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a new and better password"
_addresses = (f"10.2.{n // 250}.{n % 250 + 1}" for n in itertools.count())


def post(client, url, body=None, ip=None, headers=None):
    """POST from a fresh client address (the /auth/* limit stays out of the way)."""
    return client.post(
        url,
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        headers=headers or {},
        environ_base={"REMOTE_ADDR": ip or next(_addresses)},
    )


def login(client, username="alice", password=PASSWORD, **kwargs):
    return post(client, "/auth/users/login", {"username": username, "password": password}, **kwargs)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def alice(app, devices) -> str:
    """Alice's account with a real password; returns a fresh owner token."""
    devices.owner("alice", PASSWORD)
    return devices.owner_token("alice")


def owner_row(app, username="alice") -> Owner:
    with app.app_context():
        owner = db.session.execute(db.select(Owner).filter_by(username=username)).scalar_one()
        db.session.expunge(owner)
        return owner


def can_list(client, token: str) -> bool:
    return client.get("/devices", headers=bearer(token)).status_code == 200


# ---------------------------------------------------------------- token versions


def test_owner_tokens_carry_the_owners_token_version(app, client, alice):
    token = login(client).get_json()["t"]
    with app.app_context():
        assert decode_token(token)["ver"] == owner_row(app).token_version == 1


def test_logout_ends_the_presented_token_and_every_other(app, client, alice):
    """The finding: there was no logout; a stolen owner token lived 24 h."""
    other = login(client).get_json()["t"]
    assert can_list(client, alice) and can_list(client, other)
    response = post(client, "/auth/users/logout", headers=bearer(alice))
    assert response.status_code == 200 and response.get_json() == {"c": "OK"}
    assert not can_list(client, alice)
    assert not can_list(client, other)
    assert post(client, "/auth/users/logout", headers=bearer(alice)).status_code == 403
    assert can_list(client, login(client).get_json()["t"])  # a new login works


def test_password_change_ends_earlier_tokens_and_answers_a_new_one(app, client, alice):
    """The finding: a leaked password could never be changed."""
    body = {"password": PASSWORD, "new_password": NEW_PASSWORD}
    response = post(client, "/auth/users/password", body, headers=bearer(alice))
    assert response.status_code == 200, response.get_json()
    fresh = response.get_json()["t"]
    assert not can_list(client, alice)
    assert can_list(client, fresh)
    assert login(client).status_code == 403
    assert login(client, password=NEW_PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"password": "not the password", "new_password": NEW_PASSWORD}, 403),
        ({"password": PASSWORD, "new_password": "short"}, 400),
        ({"password": PASSWORD, "new_password": "z" * 20}, 400),
        ({"password": PASSWORD, "new_password": "1qaz2wsx3edc4rfv"}, 400),
        ({"password": PASSWORD}, 400),
        ({"password": PASSWORD, "new_password": NEW_PASSWORD, "extra": 1}, 400),
    ],
)
def test_password_change_refusals_change_nothing(app, client, alice, body, status):
    response = post(client, "/auth/users/password", body, headers=bearer(alice))
    assert response.status_code == status
    assert can_list(client, alice)
    assert login(client).status_code == 200


def test_password_change_needs_an_owner_token(client, alice, devices):
    body = {"password": PASSWORD, "new_password": NEW_PASSWORD}
    assert post(client, "/auth/users/password", body).status_code == 403
    master = devices.master(owner="alice")
    device_token = bearer(devices.token(master))
    assert post(client, "/auth/users/password", body, headers=device_token).status_code == 403


def test_tokens_of_the_first_release_without_a_version_are_refused(app, client, alice):
    from flask_jwt_extended import create_access_token

    with app.app_context():
        owner = owner_row(app)
        old = create_access_token(identity=str(owner.id), additional_claims={"role": "owner"})
    assert not can_list(client, old)


# ---------------------------------------------------------------- the CLI


def test_cli_set_password_ends_tokens_and_sets_it(app, client, runner, alice):
    result = runner.invoke(
        args=["users", "set-password", "Alice", "--password-stdin"], input=NEW_PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert not can_list(client, alice)
    assert login(client, password=NEW_PASSWORD).status_code == 200


def test_cli_set_password_refuses_a_weak_one(client, runner, alice):
    result = runner.invoke(
        args=["users", "set-password", "alice", "--password-stdin"], input="password1234\n"
    )
    assert result.exit_code == 1 and "BAD_REQUEST" in result.output
    assert can_list(client, alice)


def test_cli_disable_and_enable(app, client, runner, alice):
    result = runner.invoke(args=["users", "disable", "alice"])
    assert result.exit_code == 0, result.output
    assert not can_list(client, alice)
    assert login(client).status_code == 403  # the same answer as wrong credentials
    assert runner.invoke(args=["users", "enable", "alice"]).exit_code == 0
    assert not can_list(client, alice)  # earlier tokens stay ended
    assert can_list(client, login(client).get_json()["t"])


def test_cli_revoke_ends_every_token(client, runner, alice):
    result = runner.invoke(args=["users", "revoke", "alice"])
    assert result.exit_code == 0 and "token version 2" in result.output
    assert not can_list(client, alice)


@pytest.mark.parametrize("command", ["set-password", "disable", "enable", "revoke"])
def test_cli_unknown_owner_is_one_line(runner, command):
    result = runner.invoke(args=["users", command, "nobody"], input="x\n")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no such owner: nobody"


# ---------------------------------------------------------------- passwords and usernames


@pytest.mark.parametrize(
    "password",
    ["aaaaaaaaaaaa", "€" * 12, "1qaz2wsx3edc", "LeaveMeAlone", "qwerty123456", "finalfantasy"],
)
def test_weak_passwords_are_refused(client, password):
    """One repeated character (the finding: `aaaaaaaaaaaa` was accepted), or a password among
    the most common ones."""
    response = post(client, "/auth/users/register", {"username": "carol", "password": password})
    assert response.status_code == 400
    assert "password" in response.get_json()["error"]


def test_common_password_list_is_the_packaged_one():
    listed = owners.common_passwords()
    assert len(listed) > 25_000
    assert {"password", "123456", "qwertyuiop", "iloveyou"} <= listed


def test_kelvin_sign_does_not_log_in_as_k(app, client, devices):
    """The finding: login lowercased before the ASCII check, so `\u212aim` logged in as `kim`."""
    devices.owner("kim", PASSWORD)
    assert login(client, "KIM").status_code == 200
    assert login(client, "\u212aim").status_code == 403


# ---------------------------------------------------------------- argon2 parameters


def test_passwords_use_owasp_parameters_and_old_hashes_are_rehashed_at_login(app, client):
    old = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4)  # the first release
    with app.app_context():
        db.session.add(Owner(username="dave", password_hash=old.hash(PASSWORD)))
        db.session.commit()
    assert login(client, "dave").status_code == 200
    stored = owner_row(app, "dave").password_hash
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert login(client, "dave").status_code == 200
    assert login(client, "dave", "wrong password!").status_code == 403


# ---------------------------------------------------------------- login floods


def test_hashing_beyond_the_slots_is_429_not_a_queue(app, client, alice, monkeypatch):
    """At most HASHING_SLOTS hashes at once per process; one more login is 429 with
    Retry-After instead of waiting behind the flood."""
    held = [owners._hashing.acquire(blocking=False) for _ in range(owners.HASHING_SLOTS)]
    try:
        assert all(held)
        response = login(client)
        assert response.status_code == 429
        assert response.get_json()["c"] == "RATE_LIMITED"
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        for _ in held:
            owners._hashing.release()
    assert login(client).status_code == 200


def test_concurrent_logins_never_hash_more_than_the_slots(app, alice, monkeypatch):
    """Many threads logging in at once: the number hashing at the same moment never exceeds
    the slots, and every login is answered (200, 403 or 429)."""
    busy, peak, lock = [0], [0], threading.Lock()

    class CountingHasher:
        """The real hasher, counting the verifications running at each moment."""

        def __init__(self, real: PasswordHasher) -> None:
            self.real = real

        def verify(self, hash_, password):
            with lock:
                busy[0] += 1
                peak[0] = max(peak[0], busy[0])
            try:
                return self.real.verify(hash_, password)
            finally:
                with lock:
                    busy[0] -= 1

        def __getattr__(self, name):
            return getattr(self.real, name)

    monkeypatch.setattr(owners, "_hasher", CountingHasher(owners._hasher))
    statuses = []

    def one(i: int) -> None:
        with app.test_client() as client:
            statuses.append(login(client, password=PASSWORD if i % 2 else "wrong").status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(statuses) == 12 and set(statuses) <= {200, 403, 429}
    assert 1 <= peak[0] <= owners.HASHING_SLOTS


def test_failed_logins_are_limited_per_username_from_any_address(app, client, alice):
    """Guessing one account from many addresses: after RATELIMIT_LOGIN_FAILURES failures the
    username answers 429, even to the right password, while other accounts log in."""
    app.config["RATELIMIT_LOGIN_FAILURES"] = "3 per minute"
    owners_other = post(client, "/auth/users/register", {"username": "erin", "password": PASSWORD})
    assert owners_other.status_code == 201
    assert [login(client, password=f"guess number {i}").status_code for i in range(3)] == [403] * 3
    limited = login(client)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert login(client, "ALICE", "another guess!").status_code == 429  # case-insensitive
    assert login(client, "erin").status_code == 200
    assert can_list(client, alice)  # tokens already held still work


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_rate_limit_key_is_the_ipv6_64(address, key):
    assert rate_limit_key(address) == key


def test_addresses_of_one_ipv6_64_share_one_auth_bucket(client):
    """The finding: 120 guesses from 120 addresses of one /64 all passed."""
    statuses = [
        client.post(
            "/auth/users/login",
            json={"username": "x", "password": "y"},
            environ_base={"REMOTE_ADDR": f"2001:db8:7:7::{i + 1:x}"},
        ).status_code
        for i in range(8)
    ]
    assert statuses == [403] * 5 + [429] * 3
    other_network = client.post(
        "/auth/users/login",
        json={"username": "x", "password": "y"},
        environ_base={"REMOTE_ADDR": "2001:db8:7:8::1"},
    )
    assert other_network.status_code == 403
