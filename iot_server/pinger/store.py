"""The pinger's database work: `last_seen_at` written in batches and read back."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from ..models import Device

_LAST_SEEN_TYPE = Device.__table__.c.last_seen_at.type

# Devices per UPDATE: bounds a batch's memory and duration; more wait for the next tick.
MAX_BATCH = 20_000

# One statement per batch, whatever its size, with a single JSON parameter: the SQL text
# never changes, so nothing is compiled per batch and no parameter limit applies.
# Only ever forward: with replicas sharing the ping load, another replica's batch may hold
# an older time for the same device and land after ours (likewise a batch kept through a
# database outage), and it must not move `last_seen_at` back.
UPDATE_LAST_SEEN = {
    "postgresql": "UPDATE {table} SET last_seen_at = CAST(seen.value AS timestamptz)"
    " FROM json_each_text(CAST(:seen AS json)) AS seen WHERE {table}.uuid = seen.key"
    " AND ({table}.last_seen_at IS NULL"
    " OR {table}.last_seen_at < CAST(seen.value AS timestamptz))",
    # SQLite >= 3.33 (UPDATE … FROM) with its built-in JSON functions. The column holds
    # SQLAlchemy's fixed-width UTC text, so comparing text compares times.
    "sqlite": "UPDATE {table} SET last_seen_at = seen.value"
    " FROM json_each(:seen) AS seen WHERE {table}.uuid = seen.key"
    " AND ({table}.last_seen_at IS NULL OR {table}.last_seen_at < seen.value)",
}


def write_last_seen(engine: Engine, seen: dict[str, float]) -> None:
    """One UPDATE for the whole batch of `{uuid: Unix time}`; unknown uuids match no row.
    `updated_at` is left alone: presence is not an edit of the device."""
    if not seen:
        return
    dialect = engine.dialect
    sql = UPDATE_LAST_SEEN.get(dialect.name)
    if sql is None:
        raise RuntimeError(f"presence writes support SQLite and PostgreSQL, not {dialect.name}")
    # The column type's own conversion, so SQLite gets the text format SQLAlchemy reads back.
    to_db = _LAST_SEEN_TYPE.dialect_impl(dialect).bind_processor(dialect)
    stamps = {}
    for uuid, at in seen.items():
        value = datetime.fromtimestamp(at, UTC)
        if to_db is not None:
            value = to_db(value)
        stamps[uuid] = value.isoformat() if isinstance(value, datetime) else value
    with engine.begin() as connection:
        connection.execute(
            text(sql.format(table=Device.__tablename__)), {"seen": json.dumps(stamps)}
        )


def read_last_seen(engine: Engine, uuids: list[str]) -> dict[str, float]:
    """`{uuid: Unix time}` of the devices' `last_seen_at` (unknown or never seen: absent)."""
    seen = {}
    with engine.connect() as connection:
        for start in range(0, len(uuids), MAX_BATCH):
            query = select(Device.uuid, Device.last_seen_at).where(
                Device.uuid.in_(uuids[start : start + MAX_BATCH]), Device.last_seen_at.is_not(None)
            )
            for uuid, at in connection.execute(query):
                seen[uuid] = at.timestamp()
    return seen
