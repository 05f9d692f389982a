"""The pinger's batch UPDATE of `last_seen_at`, on SQLite and PostgreSQL."""

from datetime import UTC, datetime

import pytest
from conftest import new_uuid
from sqlalchemy import event

from iot_server.extensions import db
from iot_server.models import Device
from iot_server.pinger.store import write_last_seen


def count_statements(engine):
    """A list that grows by one per statement sent through `engine`."""
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args, **kw: statements.append(args[2]))
    return statements


def test_write_last_seen_is_one_statement(app, devices):
    known = [devices.master() for _ in range(50)]
    unknown = [new_uuid() for _ in range(10)]
    at = datetime(2025, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
    before = devices.get(known[0]).updated_at
    with app.app_context():
        engine = db.engine
        statements = count_statements(engine)
        write_last_seen(engine, {u: at.timestamp() + i for i, u in enumerate(known + unknown)})
    assert len(statements) == 1
    assert statements[0].lstrip().upper().startswith("UPDATE")
    for i, uuid in enumerate(known):
        device = devices.get(uuid)
        assert device.last_seen_at.tzinfo is not None
        assert device.last_seen_at.timestamp() == pytest.approx(at.timestamp() + i, abs=1e-5)
        assert device.updated_at == before if uuid == known[0] else True
    with app.app_context():
        assert db.session.query(Device).count() == 50  # unknown uuids created nothing


def test_write_last_seen_of_nothing_sends_nothing(app):
    with app.app_context():
        statements = count_statements(db.engine)
        write_last_seen(db.engine, {})
    assert statements == []
