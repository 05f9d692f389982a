"""What the hooks know about a device: its state read in one query, and its session.

Reads and writes go straight to a connection, not through the ORM session: one statement
per login or topic check, with no transaction to open and close around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from .. import policy
from ..extensions import db
from ..models import MASTER, Device, is_registered
from . import caches


@dataclass(frozen=True)
class DeviceState:
    """What authorization needs to know about a device, as read at `loaded_at`."""

    uuid: str
    kind: str
    token_version: int
    enabled: bool
    is_registered: bool
    client_id: str | None
    agents: frozenset[str]
    loaded_at: float
    created_at: datetime | None = None

    def identity(self) -> policy.Identity:
        """The policy identity of this device."""
        return policy.device_identity(self.uuid, self.kind, self.agents)


class DatabaseUnavailable(Exception):
    """The hook could not read or write the database: deny, log, never cache."""


_COLUMNS = Device.__table__.c
#: The device and its agents in one indexed query (`uuid = u OR master_uuid = u`); built
#: once, so each call only binds the uuid.
_DEVICE_AND_AGENTS = select(
    _COLUMNS.uuid,
    _COLUMNS.kind,
    _COLUMNS.token_version,
    _COLUMNS.enabled,
    _COLUMNS.owner_id,
    _COLUMNS.master_uuid,
    _COLUMNS.mqtt_client_id,
    _COLUMNS.created_at,
).where(or_(_COLUMNS.uuid == bindparam("uuid"), _COLUMNS.master_uuid == bindparam("uuid")))


def load_device_state(uuid: str) -> DeviceState | None:
    """The device's state and its agents' uuids, read in one query."""
    try:
        # One statement, no transaction to open and close: two round trips fewer per
        # login than a session's BEGIN … ROLLBACK (the hot path of every CONNECT).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            rows = conn.execute(_DEVICE_AND_AGENTS, {"uuid": uuid}).all()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(type(exc).__name__) from None
    device = next((row for row in rows if row.uuid == uuid), None)
    if device is None:
        return None
    agents = frozenset(
        row.uuid for row in rows if device.kind == MASTER and row.master_uuid == uuid
    )
    return DeviceState(
        uuid=uuid,
        kind=device.kind,
        token_version=device.token_version,
        enabled=bool(device.enabled),
        is_registered=is_registered(device.kind, device.owner_id, device.master_uuid),
        client_id=device.mqtt_client_id,
        agents=agents,
        loaded_at=caches.clock(),
        created_at=device.created_at,
    )


def record_client_id(uuid: str, clientid: str, token_version: int | None = None) -> bool:
    """Remember the client id the device authenticated with (only called when it changed).

    With `token_version`, only while the device is still at that version: False when a
    revocation committed since the caller read it.
    """
    statement = update(Device.__table__).where(_COLUMNS.uuid == uuid)
    if token_version is not None:
        statement = statement.where(_COLUMNS.token_version == token_version)
    try:
        with db.engine.begin() as conn:
            result = conn.execute(statement.values(mqtt_client_id=clientid))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(type(exc).__name__) from None
    return result.rowcount == 1
