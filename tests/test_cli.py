"""The admin CLI: users and devices, exit codes and one-line errors."""

import pytest
from conftest import AGENT_SECRET, MASTER_SECRET, new_uuid, request_token


def invoke(runner, *args, input=None):
    return runner.invoke(args=list(args), input=input)


def test_users_create_with_password_stdin(runner):
    result = invoke(
        runner, "users", "create", "Alice", "--password-stdin", input="a long enough password\n"
    )
    assert result.exit_code == 0, result.output
    assert "created owner alice" in result.output


def test_users_create_with_prompt(runner):
    password = "another long password"
    result = invoke(runner, "users", "create", "bob", input=f"{password}\n{password}\n")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("ab", "a long enough password"),
        ("Bad Name", "a long enough password"),
        ("carol", "short"),
        ("\u212aevin", "a long enough password"),
    ],
)
def test_users_create_rejects_bad_input(runner, username, password):
    result = invoke(runner, "users", "create", username, "--password-stdin", input=password + "\n")
    assert result.exit_code == 1
    assert "BAD_REQUEST" in result.output


def test_users_create_duplicate_is_one_line_error(runner):
    invoke(runner, "users", "create", "dave", "--password-stdin", input="a long enough password\n")
    result = invoke(
        runner, "users", "create", "DAVE", "--password-stdin", input="a long enough password\n"
    )
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "CONFLICT" in result.output


def test_master_flow_not_registered_then_claimed(client, runner):
    """The issue's 'done when': NOT_REGISTERED → admin claims → OK → /mqtt answers."""
    uuid = new_uuid()
    assert request_token(client, uuid, MASTER_SECRET).status_code == 401
    invoke(runner, "users", "create", "erin", "--password-stdin", input="a long enough password\n")
    result = invoke(runner, "devices", "claim", uuid.upper(), "--owner", "ERIN")
    assert result.exit_code == 0, result.output
    response = request_token(client, uuid, MASTER_SECRET)
    assert response.status_code == 200
    token = response.get_json()["t"]
    mqtt = client.get("/mqtt", headers={"Authorization": f"Bearer {token}"})
    assert mqtt.get_json() == {"c": "OK", "ip": "localhost:1883"}


def test_agent_flow_through_link(client, runner, devices):
    master = devices.master()
    agent = new_uuid()
    assert request_token(client, agent, AGENT_SECRET).status_code == 401
    result = invoke(runner, "devices", "link", master, agent)
    assert result.exit_code == 0, result.output
    response = request_token(client, agent, AGENT_SECRET)
    assert response.status_code == 200
    assert (
        client.get(
            "/mqtt", headers={"Authorization": f"Bearer {response.get_json()['t']}"}
        ).status_code
        == 200
    )


def test_claim_errors(runner, devices):
    agent = devices.agent()
    invoke(runner, "users", "create", "frank", "--password-stdin", input="a long enough password\n")
    assert invoke(runner, "devices", "claim", new_uuid(), "--owner", "nobody").exit_code == 1
    assert invoke(runner, "devices", "claim", "not-a-uuid", "--owner", "frank").exit_code == 1
    result = invoke(runner, "devices", "claim", agent, "--owner", "frank")
    assert result.exit_code == 1 and "BAD_REQUEST" in result.output
    taken = devices.master(owner="someone")
    result = invoke(runner, "devices", "claim", taken, "--owner", "frank")
    assert result.exit_code == 1 and "CONFLICT" in result.output


def test_link_errors(runner, devices):
    master, other_master = devices.master(), devices.master()
    agent = devices.agent(master=master)
    assert "CONFLICT" in invoke(runner, "devices", "link", other_master, agent).output
    assert "BAD_REQUEST" in invoke(runner, "devices", "link", agent, new_uuid()).output
    assert "BAD_REQUEST" in invoke(runner, "devices", "link", master, other_master).output
    assert invoke(runner, "devices", "link", new_uuid(), new_uuid()).exit_code == 1
    assert invoke(runner, "devices", "link", master, agent).exit_code == 0  # idempotent


def test_revoke_disable_enable(runner, devices):
    uuid = devices.master()
    assert invoke(runner, "devices", "revoke", uuid).exit_code == 0
    assert devices.get(uuid).token_version == 2
    assert invoke(runner, "devices", "disable", uuid).exit_code == 0
    assert devices.get(uuid).enabled is False
    assert invoke(runner, "devices", "enable", uuid).exit_code == 0
    assert devices.get(uuid).enabled is True
    assert invoke(runner, "devices", "revoke", new_uuid()).exit_code == 1


def test_list(runner, devices):
    master = devices.master()
    agent = devices.agent(master=master)
    output = invoke(runner, "devices", "list").output
    assert master in output and agent in output and "registered" in output
