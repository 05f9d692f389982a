"""Migrations on SQLite and PostgreSQL: a database of the previous release upgrades in place,
keeping what it held, and downgrades again."""

from __future__ import annotations

import pytest
from conftest import ROOT, new_uuid
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, text

from iot_server import create_app
from iot_server.extensions import db

MIGRATIONS = str(ROOT / "migrations")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    """A database with no tables: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.sqlite'}"
        return
    postgres_url = request.getfixturevalue("postgres_url")
    url = f"{postgres_url}_migrations"
    name = url.rsplit("/", 1)[1]
    server = create_engine(
        postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield url
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


def test_0004_carries_each_remembered_client_id_over_and_back(empty_database):
    """The one client id a device had under 0001 becomes its session under 0004 (live
    sessions survive the upgrade); a downgrade keeps the newest current one."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database})
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0001")
        with_session, without = new_uuid(), new_uuid()
        with db.engine.begin() as connection:
            for uuid, client_id in ((with_session, "esp-1"), (without, None)):
                connection.execute(
                    text(
                        "INSERT INTO devices (uuid, kind, token_version, enabled,"
                        " mqtt_client_id, created_at, updated_at) VALUES"
                        " (:uuid, 'agent', 3, true, :client_id, :now, :now)"
                    ),
                    {"uuid": uuid, "client_id": client_id, "now": "2026-11-01 10:00:00+00:00"},
                )

        upgrade(directory=MIGRATIONS)
        columns = {column["name"] for column in inspect(db.engine).get_columns("devices")}
        assert "mqtt_client_id" not in columns
        with db.engine.connect() as connection:
            sessions = connection.execute(
                text("SELECT device_uuid, client_id, token_version FROM device_sessions")
            ).all()
        assert [tuple(row) for row in sessions] == [(with_session, "esp-1", 3)]

        downgrade(directory=MIGRATIONS, revision="0001")
        with db.engine.connect() as connection:
            restored = dict(
                connection.execute(text("SELECT uuid, mqtt_client_id FROM devices")).all()
            )
        assert restored == {with_session: "esp-1", without: None}
        assert "device_sessions" not in inspect(db.engine).get_table_names()
        db.engine.dispose()


def test_the_migrations_are_one_chain():
    """One head, each revision after the one before: parallel branches that each added a
    migration must be re-chained when they merge, or `flask db upgrade` stops."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert len(scripts.get_heads()) == 1, scripts.get_heads()
    chain = list(scripts.walk_revisions())
    assert [s.down_revision for s in chain[:-1]] == [s.revision for s in chain[1:]]
