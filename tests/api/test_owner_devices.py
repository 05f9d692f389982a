"""The owner device API: list, show, rename, claim, release, link, unlink, revoke.

Owners see only their own devices (anything else is 404, except claim's 409), every body
and path parameter is validated, and every way of losing a device revokes its tokens.
"""

from datetime import UTC, datetime, timedelta

import pytest
from conftest import AGENT_SECRET, MASTER_SECRET, new_uuid, request_token
from flask_jwt_extended import create_access_token

from iot_server import tokens
from iot_server.extensions import db
from iot_server.models import Device, Owner

OTHER = "01234567-89ab-cdef-0123-456789abcdef"


@pytest.fixture
def alice(devices) -> dict:
    """Alice's headers."""
    return devices.owner_headers("alice")


@pytest.fixture
def bob(devices) -> dict:
    """Bob's headers (the other owner)."""
    return devices.owner_headers("bob")


def set_last_seen(app, uuid, moment):
    """Write a device's last_seen_at as the pinger would."""
    with app.app_context():
        db.session.get(Device, uuid).last_seen_at = moment
        db.session.commit()


# ---------------------------------------------------------------- list and show


def test_empty_list(client, alice):
    response = client.get("/devices", headers=alice)
    assert response.status_code == 200
    assert response.get_json() == {"c": "OK", "devices": [], "next": None}


def test_list_has_masters_and_agents_oldest_first(client, devices, alice):
    first = devices.master()
    agent = devices.agent(master=first)
    second = devices.master()
    devices.master(owner="bob")
    devices.agent()  # unlinked: nobody's
    body = client.get("/devices", headers=alice).get_json()
    assert [entry["uuid"] for entry in body["devices"]] == [first, agent, second]
    by_uuid = {entry["uuid"]: entry for entry in body["devices"]}
    assert by_uuid[first] == {
        "uuid": first,
        "kind": "master",
        "name": None,
        "online": False,
        "last_seen_at": None,
        "master": None,
        "agents": [agent],
    }
    assert by_uuid[agent]["master"] == first
    assert by_uuid[agent]["agents"] == []
    assert by_uuid[agent]["kind"] == "agent"
    assert by_uuid[second]["agents"] == []


def test_online_means_seen_within_a_minute(app, client, devices, alice):
    recent, stale = devices.master(), devices.master()
    now = datetime.now(UTC)
    set_last_seen(app, recent, now - timedelta(seconds=5))
    set_last_seen(app, stale, now - timedelta(seconds=61))
    entries = {e["uuid"]: e for e in client.get("/devices", headers=alice).get_json()["devices"]}
    assert entries[recent]["online"] is True
    assert entries[stale]["online"] is False
    seen = datetime.strptime(entries[recent]["last_seen_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(seen.replace(tzinfo=UTC) - (now - timedelta(seconds=5))) < timedelta(seconds=1.5)
    assert entries[stale]["last_seen_at"].endswith("Z")


def test_show_own_master_and_agent(client, devices, alice):
    master = devices.master()
    agent = devices.agent(master=master)
    response = client.get(f"/devices/{master}", headers=alice)
    assert response.status_code == 200
    assert response.get_json()["device"]["agents"] == [agent]
    response = client.get(f"/devices/{agent.upper()}", headers=alice)
    assert response.status_code == 200
    assert response.get_json()["device"]["uuid"] == agent
    assert response.get_json()["device"]["master"] == master


def test_other_owners_devices_are_not_found(client, devices, alice):
    master = devices.master(owner="bob")
    agent = devices.agent(master=master)
    for uuid in (master, agent, new_uuid(), devices.master(registered=False)):
        for call in (
            client.get(f"/devices/{uuid}", headers=alice),
            client.patch(f"/devices/{uuid}", headers=alice, json={"name": "mine"}),
            client.post(f"/devices/{uuid}/revoke", headers=alice),
            client.delete(f"/devices/{uuid}/claim", headers=alice),
            client.put(f"/devices/{uuid}/agents/{new_uuid()}", headers=alice),
            client.delete(f"/devices/{uuid}/agents/{agent}", headers=alice),
        ):
            assert call.status_code == 404, call.request.path
            assert call.get_json()["c"] == "NOT_FOUND"
    assert devices.get(master).name is None
    assert devices.get(master).token_version == 1
    assert devices.get(agent).master_uuid == master


MALFORMED = [
    "not-a-uuid",
    "0123456789abcdef0123456789abcdef",
    "{01234567-89ab-cdef-0123-456789abcdef}",
    "urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
    "01234567-89ab-cdef-0123-456789abcdeg",
    "01234567-89ab-cdef-0123-456789abcdef%0A",
    "%27%20OR%201=1--",
    "x" * 500,
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_path_uuid_is_bad_request(client, devices, alice, bad):
    master = devices.master()
    calls = [
        client.get(f"/devices/{bad}", headers=alice),
        client.patch(f"/devices/{bad}", headers=alice, json={"name": "x"}),
        client.post(f"/devices/{bad}/claim", headers=alice),
        client.delete(f"/devices/{bad}/claim", headers=alice),
        client.post(f"/devices/{bad}/revoke", headers=alice),
        client.put(f"/devices/{bad}/agents/{new_uuid()}", headers=alice),
        client.put(f"/devices/{master}/agents/{bad}", headers=alice),
        client.delete(f"/devices/{master}/agents/{bad}", headers=alice),
    ]
    for call in calls:
        assert call.status_code == 400, call.request.path
        assert call.get_json()["c"] == "BAD_REQUEST"
        assert "uuid" in call.get_json()["error"]


# ---------------------------------------------------------------- owner token


def expired_owner_token(app, devices) -> str:
    """An owner token that expired a minute ago."""
    devices.owner_token("alice")
    with app.app_context():
        owner = db.session.execute(db.select(Owner).filter_by(username="alice")).scalar_one()
        return create_access_token(
            identity=str(owner.id),
            additional_claims={"role": "owner"},
            expires_delta=timedelta(seconds=-60),
        )


ROUTES = [
    ("get", "/devices"),
    ("get", f"/devices/{OTHER}"),
    ("patch", f"/devices/{OTHER}"),
    ("post", f"/devices/{OTHER}/claim"),
    ("delete", f"/devices/{OTHER}/claim"),
    ("put", f"/devices/{OTHER}/agents/{OTHER}"),
    ("delete", f"/devices/{OTHER}/agents/{OTHER}"),
    ("post", f"/devices/{OTHER}/revoke"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization", ["none", "garbage", "basic", "device", "expired", "forged", "deleted"]
)
def test_bad_owner_token_is_forbidden(app, client, devices, method, path, authorization):
    master = devices.master()
    if authorization == "none":
        headers = {}
    elif authorization == "garbage":
        headers = {"Authorization": "Bearer not.a.token"}
    elif authorization == "basic":
        headers = {"Authorization": "Basic " + devices.owner_token()}
    elif authorization == "device":
        headers = {"Authorization": "Bearer " + devices.token(master)}
    elif authorization == "expired":
        headers = {"Authorization": "Bearer " + expired_owner_token(app, devices)}
    elif authorization == "forged":
        other = devices.owner_token().split(".")
        other[2] = other[2][::-1]
        headers = {"Authorization": "Bearer " + ".".join(other)}
    else:
        headers = devices.owner_headers("carol")
        with app.app_context():
            db.session.execute(db.delete(Owner).filter_by(username="carol"))
            db.session.commit()
    response = getattr(client, method)(path, headers=headers, json={"name": "x"})
    assert response.status_code == 403
    assert response.get_json()["c"] == "FORBIDDEN"
    with app.app_context():
        assert db.session.get(Device, OTHER) is None


def test_owner_token_is_refused_by_mqtt_and_registration(client, devices):
    headers = devices.owner_headers()
    assert client.get("/mqtt", headers=headers).status_code == 403
    response = client.get(f"/auth/devices/request?uuid={OTHER}", headers=headers)
    assert response.status_code == 403


# ---------------------------------------------------------------- rename


@pytest.mark.parametrize("name", ["Kitchen", "x" * 64, "Küche ☃", "a b"])
def test_rename_and_clear(client, devices, alice, name):
    master = devices.master()
    response = client.patch(f"/devices/{master}", headers=alice, json={"name": name})
    assert response.status_code == 200
    assert response.get_json()["device"]["name"] == name
    assert devices.get(master).name == name
    response = client.patch(f"/devices/{master}", headers=alice, json={"name": None})
    assert response.get_json()["device"]["name"] is None
    assert devices.get(master).name is None


def test_rename_an_agent(client, devices, alice):
    agent = devices.agent(master=devices.master())
    assert (
        client.patch(f"/devices/{agent}", headers=alice, json={"name": "probe"}).status_code == 200
    )
    assert devices.get(agent).name == "probe"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "x" * 65}, "name must be 1-64"),
        ({"name": ""}, "name must be 1-64"),
        ({"name": 5}, "name must be a string or null"),
        ({"name": ["x"]}, "name must be a string or null"),
        ({"name": "tab\there"}, "control characters"),
        ({"name": "nul\x00"}, "NUL"),
        ({"name": "x", "owner_id": 1}, "unknown field(s): owner_id"),
        ({"kind": "agent", "uuid": OTHER}, "unknown field(s): kind, uuid"),
        ({}, "missing field(s): name"),
        ([], "JSON object"),
        ("kitchen", "JSON object"),
        (None, "JSON object"),
    ],
)
def test_rename_validation(client, devices, alice, body, needle):
    master = devices.master()
    response = client.patch(f"/devices/{master}", headers=alice, json=body)
    assert response.status_code == 400
    assert needle in response.get_json()["error"]
    assert devices.get(master).name is None


def test_rename_with_invalid_json_and_lone_surrogate(client, devices, alice):
    master = devices.master()
    url = f"/devices/{master}"
    headers = {**alice, "Content-Type": "application/json"}
    assert client.patch(url, headers=headers, data="{name:").status_code == 400
    assert client.patch(url, headers=headers, data=b"\xff\xfe").status_code == 400
    response = client.patch(url, headers=headers, data='{"name": "\\ud800"}')
    assert response.status_code == 400


def test_rename_body_over_64_kb_is_too_large(client, devices, alice):
    master = devices.master()
    response = client.patch(f"/devices/{master}", headers=alice, json={"name": "x" * 70_000})
    assert response.status_code == 413
    assert response.get_json()["c"] == "TOO_LARGE"


# ---------------------------------------------------------------- claim and release


def test_claim_unknown_uuid_creates_the_master(app, client, devices, alice):
    uuid = new_uuid()
    response = client.post(f"/devices/{uuid.upper()}/claim", headers=alice)
    assert response.status_code == 201
    assert response.get_json()["device"]["uuid"] == uuid
    assert response.get_json()["device"]["kind"] == "master"
    with app.app_context():
        alice_id = db.session.execute(db.select(Owner.id).filter_by(username="alice")).scalar()
    assert devices.get(uuid).owner_id == alice_id


def test_claim_existing_master_then_again(client, devices, alice):
    uuid = devices.master(registered=False)
    assert request_token(client, uuid, MASTER_SECRET).status_code == 401
    assert client.post(f"/devices/{uuid}/claim", headers=alice).status_code == 200
    assert client.post(f"/devices/{uuid}/claim", headers=alice).status_code == 200
    assert request_token(client, uuid, MASTER_SECRET).status_code == 200


def test_claim_an_agent_is_bad_request(client, devices, alice):
    response = client.post(f"/devices/{devices.agent()}/claim", headers=alice)
    assert response.status_code == 400


def test_claim_someone_elses_master_is_conflict(client, devices, alice, bob):
    uuid = devices.master(owner="bob")
    response = client.post(f"/devices/{uuid}/claim", headers=alice)
    assert response.status_code == 409
    assert response.get_json()["c"] == "CONFLICT"
    assert client.get(f"/devices/{uuid}", headers=bob).status_code == 200


def test_release_unlinks_agents_and_revokes_all(client, devices, alice, bob):
    master = devices.master()
    agent = devices.agent(master=master)
    master_token, agent_token = devices.token(master), devices.token(agent)
    response = client.delete(f"/devices/{master}/claim", headers=alice)
    assert response.status_code == 200
    assert response.get_json() == {"c": "OK"}
    released, unlinked = devices.get(master), devices.get(agent)
    assert released.owner_id is None and released.token_version == 2
    assert unlinked.master_uuid is None and unlinked.token_version == 2
    for token in (master_token, agent_token):
        assert client.get("/mqtt", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    assert request_token(client, master, MASTER_SECRET).status_code == 401
    assert request_token(client, agent, AGENT_SECRET).status_code == 401
    assert client.get("/devices", headers=alice).get_json()["devices"] == []
    # Released, it is free for another owner.
    assert client.post(f"/devices/{master}/claim", headers=bob).status_code == 200


def test_release_an_agent_is_bad_request(client, devices, alice):
    agent = devices.agent(master=devices.master())
    assert client.delete(f"/devices/{agent}/claim", headers=alice).status_code == 400
    assert devices.get(agent).token_version == 1


# ---------------------------------------------------------------- link and unlink


def test_link_unknown_agent_creates_it(client, devices, alice):
    master, agent = devices.master(), new_uuid()
    response = client.put(f"/devices/{master}/agents/{agent.upper()}", headers=alice)
    assert response.status_code == 201
    device = response.get_json()["device"]
    assert device["uuid"] == agent and device["kind"] == "agent" and device["master"] == master
    assert client.get(f"/devices/{master}", headers=alice).get_json()["device"]["agents"] == [agent]
    assert request_token(client, agent, AGENT_SECRET).status_code == 200


def test_link_existing_agent_then_again(client, devices, alice):
    master, agent = devices.master(), devices.agent()
    assert client.put(f"/devices/{master}/agents/{agent}", headers=alice).status_code == 200
    assert client.put(f"/devices/{master}/agents/{agent}", headers=alice).status_code == 200
    assert devices.get(agent).master_uuid == master


def test_link_agent_of_another_master_is_conflict(client, devices, alice):
    mine, other = devices.master(), devices.master(owner="bob")
    agent = devices.agent(master=other)
    assert client.put(f"/devices/{mine}/agents/{agent}", headers=alice).status_code == 409
    also_mine = devices.master()
    linked = devices.agent(master=also_mine)
    assert client.put(f"/devices/{mine}/agents/{linked}", headers=alice).status_code == 409
    assert devices.get(agent).master_uuid == other
    assert devices.get(linked).master_uuid == also_mine


def test_link_wrong_kinds_is_bad_request(client, devices, alice):
    master, other_master = devices.master(), devices.master()
    agent = devices.agent(master=master)
    assert client.put(f"/devices/{master}/agents/{other_master}", headers=alice).status_code == 400
    assert client.put(f"/devices/{agent}/agents/{new_uuid()}", headers=alice).status_code == 400
    assert client.put(f"/devices/{master}/agents/{master}", headers=alice).status_code == 400


def test_unlink_revokes_the_agent(client, devices, alice):
    master = devices.master()
    agent = devices.agent(master=master)
    token = devices.token(agent)
    response = client.delete(f"/devices/{master}/agents/{agent}", headers=alice)
    assert response.status_code == 200
    assert response.get_json() == {"c": "OK"}
    assert devices.get(agent).master_uuid is None
    assert devices.get(agent).token_version == 2
    assert devices.get(master).token_version == 1
    assert client.get("/mqtt", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    assert request_token(client, agent, AGENT_SECRET).status_code == 401
    # Not linked any more: a second unlink finds nothing.
    assert client.delete(f"/devices/{master}/agents/{agent}", headers=alice).status_code == 404


def test_unlink_an_agent_of_another_master_is_not_found(client, devices, alice):
    mine = devices.master()
    elsewhere = devices.agent(master=devices.master(owner="bob"))
    response = client.delete(f"/devices/{mine}/agents/{elsewhere}", headers=alice)
    assert response.status_code == 404
    assert devices.get(elsewhere).token_version == 1


def test_unlink_with_a_master_in_the_agent_place_is_bad_request(client, devices, alice):
    master, other = devices.master(), devices.master()
    assert client.delete(f"/devices/{master}/agents/{other}", headers=alice).status_code == 400


# ---------------------------------------------------------------- revoke


def test_revoke_invalidates_tokens_but_keeps_registration(client, devices, alice):
    master = devices.master()
    old = devices.token(master)
    response = client.post(f"/devices/{master}/revoke", headers=alice)
    assert response.status_code == 200
    assert response.get_json()["device"]["uuid"] == master
    assert devices.get(master).token_version == 2
    assert client.get("/mqtt", headers={"Authorization": f"Bearer {old}"}).status_code == 403
    fresh = request_token(client, master, MASTER_SECRET).get_json()["t"]
    assert client.get("/mqtt", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_revoke_an_agent(client, devices, alice):
    agent = devices.agent(master=devices.master())
    assert client.post(f"/devices/{agent}/revoke", headers=alice).status_code == 200
    assert devices.get(agent).token_version == 2


# ---------------------------------------------------------------- the whole flow


def test_owner_flow_end_to_end_and_isolation(client, devices):
    """Register, login, claim, link; both devices get tokens; a second owner sees nothing."""
    from test_owners import login, register

    assert register(client, "owner.one").status_code == 201
    headers = {"Authorization": "Bearer " + login(client, "owner.one").get_json()["t"]}
    master, agent = new_uuid(), new_uuid()
    assert request_token(client, master, MASTER_SECRET).status_code == 401
    assert client.post(f"/devices/{master}/claim", headers=headers).status_code == 200
    assert client.put(f"/devices/{master}/agents/{agent}", headers=headers).status_code == 201
    for uuid, secret in ((master, MASTER_SECRET), (agent, AGENT_SECRET)):
        token = request_token(client, uuid, secret).get_json()["t"]
        response = client.get("/mqtt", headers={"Authorization": f"Bearer {token}"})
        assert response.get_json()["c"] == "OK"
    listed = client.get("/devices", headers=headers).get_json()["devices"]
    assert [d["uuid"] for d in listed] == [master, agent]

    assert register(client, "owner.two").status_code == 201
    other = {"Authorization": "Bearer " + login(client, "owner.two").get_json()["t"]}
    assert client.get("/devices", headers=other).get_json()["devices"] == []
    assert client.get(f"/devices/{agent}", headers=other).status_code == 404
    assert client.post(f"/devices/{master}/revoke", headers=other).status_code == 404
    assert client.post(f"/devices/{master}/claim", headers=other).status_code == 409


# ---------------------------------------------------------------- HTTP edges


def test_wrong_method_is_405_in_our_shape(client, alice):
    response = client.post("/devices", headers=alice)
    assert response.status_code == 405
    assert response.get_json()["c"] == "METHOD_NOT_ALLOWED"
    assert "GET" in response.headers["Allow"]


def test_devices_use_the_default_rate_limit(database, devices):
    from conftest import config_for

    from iot_server import create_app
    from iot_server.extensions import limiter

    app = create_app(config_for(database, RATELIMIT_DEFAULT="3 per minute"))
    with app.app_context():
        limiter.reset()
        owner = db.session.execute(db.select(Owner).filter_by(username="alice")).scalar()
        owner = owner or Owner(username="alice", password_hash="x")
        db.session.add(owner)
        db.session.commit()
        headers = {"Authorization": "Bearer " + tokens.issue_owner_token(owner)}
    client = app.test_client()
    statuses = [client.get("/devices", headers=headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/devices", headers=headers)
    assert limited.get_json()["c"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1
    with app.app_context():
        limiter.reset()
        db.engine.dispose()


def test_database_outage_is_503(app, devices):
    from conftest import free_port

    from iot_server import create_app

    headers = devices.owner_headers()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    down = create_app({"SQLALCHEMY_DATABASE_URI": url}).test_client()
    for response in (
        down.get("/devices", headers=headers),
        down.post(f"/devices/{OTHER}/claim", headers=headers),
    ):
        assert response.status_code == 503
        assert response.get_json() == {"c": "ERROR", "error": "database unavailable"}
