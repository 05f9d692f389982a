"""The admin CLI: users and devices, exit codes and one-line errors, and `flask db upgrade`
on a database in trouble."""

import json
import os
import subprocess
import sys

import pytest
from conftest import AGENT_SECRET, MASTER_SECRET, ROOT, free_port, new_uuid, request_token
from flask_migrate import upgrade

from iot_server import create_app
from iot_server.database import MIGRATIONS
from iot_server.extensions import db


def migration_chain() -> list[str]:
    """Every revision of migrations/, oldest first (read from the files)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]


REVISIONS = migration_chain()


def invoke(runner, *args, input=None):
    return runner.invoke(args=list(args), input=input)


def test_users_create_with_password_stdin(runner):
    result = invoke(
        runner, "users", "create", "Alice", "--password-stdin", input="a long enough password\n"
    )
    assert result.exit_code == 0, result.output
    assert "created owner alice" in result.output


def test_users_create_with_prompt(runner, monkeypatch):
    monkeypatch.setattr("iot_server.cli.stdin_is_terminal", lambda: True)
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


def test_list_has_a_header_row(runner, devices):
    master = devices.master()
    lines = invoke(runner, "devices", "list").output.splitlines()
    assert lines[0].split() == ["UUID", "KIND", "STATE", "OWNER/MASTER", "LAST", "SEEN"]
    assert lines[1].split()[:4] == [master, "master", "registered", "alice"]
    assert lines[1].index("master") == lines[0].index("KIND")  # columns line up


def test_list_of_no_devices_is_the_header_alone(runner):
    assert invoke(runner, "devices", "list").output.splitlines() == [
        "UUID  KIND  STATE  OWNER/MASTER  LAST SEEN"
    ]


# ---------------------------------------------------------------- the database, in one line

ADMIN_COMMANDS = [
    ("users", "create", "zoe", "--password-stdin"),
    ("devices", "list"),
    ("devices", "claim", "0f0e0d0c-0b0a-4908-8706-050403020100", "--owner", "zoe"),
    ("devices", "link", "0f0e0d0c-0b0a-4908-8706-050403020100", new_uuid()),
    ("devices", "revoke", "0f0e0d0c-0b0a-4908-8706-050403020100"),
    ("devices", "disable", "0f0e0d0c-0b0a-4908-8706-050403020100"),
    ("devices", "enable", "0f0e0d0c-0b0a-4908-8706-050403020100"),
]


def sqlite_at(path, revision: str | None) -> str:
    """A SQLite database migrated to `revision` (None: no tables at all)."""
    url = f"sqlite:///{path}"
    if revision is not None:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url})
        with app.app_context():
            upgrade(directory=str(MIGRATIONS), revision=revision, x_arg=["quiet=1"])
            db.engine.dispose()
    return url


def broken_database(kind: str, tmp_path, request) -> tuple[str, str]:
    """A database URL in trouble, and what the one line must say about it."""
    if kind == "no tables":
        return sqlite_at(
            tmp_path / "empty.sqlite", None
        ), "no tables yet: run `flask --app wsgi db upgrade`"
    if kind == "behind":
        return sqlite_at(
            tmp_path / "old.sqlite", "0001"
        ), f"at revision 0001, this code needs {REVISIONS[-1]}: run `flask --app wsgi db upgrade`"
    if kind == "unreachable":
        url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
        return url, "cannot reach the database at"
    if kind == "missing":
        postgres_url = request.getfixturevalue("postgres_url")
        url = postgres_url.rsplit("/", 1)[0] + "/iot_no_such_database"
        return url, 'database "iot_no_such_database" does not exist: create it (createdb'
    assert kind == "unopenable"
    return f"sqlite:///{tmp_path}/no/such/folder/x.sqlite", "cannot open the SQLite database"


PROBLEMS = ["no tables", "behind", "unreachable", "missing", "unopenable"]


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_names_a_database_problem_in_one_line(tmp_path, request, command, problem):
    url, expected = broken_database(problem, tmp_path, request)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    result = app.test_cli_runner().invoke(args=list(command), input="a long enough password\n")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert expected in result.stderr
    with app.app_context():
        db.engine.dispose()


def flask_command(*args: str, env: dict, input: str | None = None, stdin=None):
    """`flask --app wsgi ARGS` as a person runs it (production config, real logging)."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env=env, input=input, stdin=stdin, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def person_env(database_url: str) -> dict:
    """A shell with only DATABASE_URL of ours set (no IOT_ENV: production logging)."""
    ours = ("IOT_ENV", "DATABASE_URL", "JWT_SECRET", "MQTT_SECRET_KEY", "LOG_FORMAT", "DEBUG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env["DATABASE_URL"] = database_url
    return env


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["unreachable", "missing", "unopenable"])
def test_db_upgrade_names_a_database_problem_in_one_line(tmp_path, request, problem):
    url, expected = broken_database(problem, tmp_path, request)
    result = flask_command("db", "upgrade", env=person_env(url))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


@pytest.mark.slow
def test_db_upgrade_says_what_it_applied_and_nothing_else(tmp_path):
    env = person_env(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    first = flask_command("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # no alembic chatter ("setup plugin", "Context impl")
    steps = zip(["empty", *REVISIONS[:-1]], REVISIONS, strict=True)
    assert [line.split(":")[0] for line in first.stdout.splitlines()] == [
        f"upgraded {before} -> {after}" for before, after in steps
    ]
    again = flask_command("db", "upgrade", env=env)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


@pytest.mark.slow
def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The same as a person sees it: stderr is one line, whatever the driver raised."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    result = flask_command("devices", "list", env=person_env(url))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "cannot reach the database" in result.stderr


@pytest.mark.slow
def test_commands_print_their_answer_only_unless_verbose(tmp_path):
    env = person_env(f"sqlite:///{tmp_path / 'cli.sqlite'}")
    assert flask_command("db", "upgrade", env=env).returncode == 0
    uuid = new_uuid()
    steps = [
        (("users", "create", "quinn", "--password-stdin"), "created owner quinn"),
        (("devices", "claim", uuid, "--owner", "quinn"), f"{uuid} claimed by quinn"),
        (("devices", "revoke", uuid), f"{uuid} revoked (token version 2)"),
    ]
    for args, answer in steps:
        result = flask_command(*args, env=env, input="a long enough password\n")
        assert (result.returncode, result.stdout, result.stderr) == (0, answer + "\n", "")
    verbose = flask_command("devices", "revoke", uuid, "--verbose", env=env)
    assert verbose.stdout == f"{uuid} revoked (token version 3)\n"
    assert json.loads(verbose.stderr)["message"] == "device revoked"


@pytest.mark.slow
def test_users_create_without_a_terminal_names_password_stdin(tmp_path):
    env = person_env(f"sqlite:///{tmp_path / 'cli.sqlite'}")
    assert flask_command("db", "upgrade", env=env).returncode == 0
    result = flask_command("users", "create", "rita", env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "--password-stdin" in result.stderr


@pytest.mark.slow
def test_a_failing_migration_is_one_line(tmp_path):
    """A schema in a state no migration expects (a table left behind by hand)."""
    import sqlite3

    path = tmp_path / "stray.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE device_sessions (x INTEGER)")
    result = flask_command("db", "upgrade", env=person_env(f"sqlite:///{path}"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "Error: the migration failed: table device_sessions already exists\n"
