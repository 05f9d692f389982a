"""What the hooks know about a device: its state and its sessions read in one query, and
the sessions they remember.

Reads and writes go straight to a connection, not through the ORM session: one statement
per topic check, and per login at most one short transaction (only when a session is new
or due for a refresh), with no ORM bookkeeping around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from types import MappingProxyType

from sqlalchemy import and_, bindparam, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .. import policy
from ..extensions import db
from ..models import MASTER, SESSIONS_PER_DEVICE, Device, DeviceSession, is_registered, utcnow
from . import caches

#: A login with a remembered client id writes nothing unless its entry is older than this:
#: a device reconnecting in a loop costs no write, and "least recently authenticated" is
#: true to within this much.
SESSION_REFRESH = timedelta(minutes=5)


@dataclass(frozen=True)
class Session:
    """A remembered MQTT session: the token version it logged in with, and when."""

    token_version: int
    authenticated_at: datetime


@dataclass(frozen=True)
class DeviceState:
    """What authorization needs to know about a device, as read at `loaded_at`."""

    uuid: str
    kind: str
    token_version: int
    enabled: bool
    is_registered: bool
    #: client id → Session, at most SESSIONS_PER_DEVICE (read-only).
    sessions: Mapping[str, Session]
    agents: frozenset[str]
    loaded_at: float
    created_at: datetime | None = None

    @cached_property
    def identity(self) -> policy.Identity:
        """The policy identity of this device (built once per state: a cached state
        answers many logins, and EMQX's allow answer is cached per identity)."""
        return policy.device_identity(self.uuid, self.kind, self.agents)

    def has_session(self, clientid: object) -> bool:
        """True when `clientid` authenticated with the device's current token version."""
        session = self.sessions.get(clientid) if isinstance(clientid, str) else None
        return session is not None and session.token_version == self.token_version

    def with_session(self, clientid: str, session: Session) -> DeviceState:
        """This state with one more (or a refreshed) session."""
        return replace(self, sessions=MappingProxyType({**self.sessions, clientid: session}))


class DatabaseUnavailable(Exception):
    """The hook could not read or write the database: deny, log, never cache."""


_DEVICES = Device.__table__
_SESSIONS = DeviceSession.__table__
_D = _DEVICES.c
_S = _SESSIONS.c
#: The device, its sessions and its agents in one indexed query: `uuid = u OR master_uuid
#: = u`, with the device's own sessions joined on (agents' rows join nothing). Built once,
#: so each call only binds the uuid. At most 16 + agents rows.
_DEVICE_SESSIONS_AND_AGENTS = (
    select(
        _D.uuid,
        _D.kind,
        _D.token_version,
        _D.enabled,
        _D.owner_id,
        _D.master_uuid,
        _D.created_at,
        _S.client_id,
        _S.token_version.label("session_version"),
        _S.authenticated_at,
    )
    .select_from(
        _DEVICES.outerjoin(_SESSIONS, and_(_S.device_uuid == _D.uuid, _D.uuid == bindparam("uuid")))
    )
    .where(or_(_D.uuid == bindparam("uuid"), _D.master_uuid == bindparam("uuid")))
)


def _read_device_rows(uuid: str) -> list:
    """The rows of the device, its sessions and its agents; a stale pooled connection is
    retried once."""
    for attempt in (1, 2):
        try:
            # One statement, no transaction to open and close: two round trips fewer per
            # login than a session's BEGIN … ROLLBACK (the hot path of every CONNECT).
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return conn.execute(_DEVICE_SESSIONS_AND_AGENTS, {"uuid": uuid}).all()
        except DBAPIError as exc:
            if attempt == 1 and exc.connection_invalidated:
                continue  # the server dropped it since it was pooled: a fresh one may work
            raise DatabaseUnavailable(type(exc).__name__) from None
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(type(exc).__name__) from None
    raise AssertionError("unreachable")


def load_device_state(uuid: str) -> DeviceState | None:
    """The device's state, its remembered sessions and its agents' uuids, in one query."""
    return device_state_from_rows(uuid, _read_device_rows(uuid))


def load_recent_states(limit: int) -> list[DeviceState]:
    """The states of up to `limit` registered devices, the most recently heard first, in
    three statements whatever their number: how a process's exact cache fills itself once
    its listener connects, so a reconnect storm after an API restart finds them cached."""
    registered = or_(_D.owner_id.is_not(None), _D.master_uuid.is_not(None))
    chosen = (
        select(_D.uuid)
        .where(registered)
        .order_by(_D.last_seen_at.desc().nulls_last(), _D.uuid)
        .limit(limit)
        .subquery()
    )
    columns = (_D.uuid, _D.kind, _D.token_version, _D.enabled, _D.owner_id, _D.master_uuid,
               _D.created_at)  # fmt: skip
    try:
        with db.engine.connect() as conn:
            devices = conn.execute(select(*columns).join(chosen, chosen.c.uuid == _D.uuid)).all()
            sessions = conn.execute(
                select(_S.device_uuid, _S.client_id, _S.token_version, _S.authenticated_at).join(
                    chosen, chosen.c.uuid == _S.device_uuid
                )
            ).all()
            links = conn.execute(
                select(_D.uuid, _D.master_uuid).join(chosen, chosen.c.uuid == _D.master_uuid)
            ).all()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(type(exc).__name__) from None
    sessions_of: dict[str, dict[str, Session]] = {}
    for device_uuid, client_id, version, at in sessions:
        sessions_of.setdefault(device_uuid, {})[client_id] = Session(version, at)
    agents_of: dict[str, set[str]] = {}
    for agent, master in links:
        agents_of.setdefault(master, set()).add(agent)
    now = caches.clock()
    return [
        DeviceState(
            uuid=row.uuid,
            kind=row.kind,
            token_version=row.token_version,
            enabled=bool(row.enabled),
            is_registered=True,
            sessions=MappingProxyType(sessions_of.get(row.uuid, {})),
            agents=frozenset(agents_of.get(row.uuid, ()) if row.kind == MASTER else ()),
            loaded_at=now,
            created_at=row.created_at,
        )
        for row in devices
    ]


def device_state_from_rows(uuid: str, rows) -> DeviceState | None:
    """Build the state from the rows of `_DEVICE_SESSIONS_AND_AGENTS` (any order)."""
    device = next((row for row in rows if row.uuid == uuid), None)
    if device is None:
        return None
    sessions = {
        row.client_id: Session(row.session_version, row.authenticated_at)
        for row in rows
        if row.uuid == uuid and row.client_id is not None
    }
    agents = frozenset(
        row.uuid for row in rows if device.kind == MASTER and row.master_uuid == uuid
    )
    return DeviceState(
        uuid=uuid,
        kind=device.kind,
        token_version=device.token_version,
        enabled=bool(device.enabled),
        is_registered=is_registered(device.kind, device.owner_id, device.master_uuid),
        sessions=MappingProxyType(sessions),
        agents=agents,
        loaded_at=caches.clock(),
        created_at=device.created_at,
    )


def needs_recording(state: DeviceState, clientid: str, now: datetime | None = None) -> bool:
    """Whether a login of `clientid` at the current version must be written: a new client
    id, another token version, or an entry older than SESSION_REFRESH."""
    session = state.sessions.get(clientid)
    if session is None or session.token_version != state.token_version:
        return True
    return (now or utcnow()) - session.authenticated_at >= SESSION_REFRESH


_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_SESSION_STATEMENTS: dict[str, tuple] = {}


def _session_statements(dialect: str) -> tuple:
    """The upsert and the prune of `record_session` for a dialect, built once."""
    if dialect not in _SESSION_STATEMENTS:
        upsert = _INSERTS[dialect](_SESSIONS).from_select(
            ["device_uuid", "client_id", "token_version", "authenticated_at"],
            select(
                _D.uuid,
                bindparam("clientid", type_=_S.client_id.type),
                _D.token_version,
                bindparam("now", type_=_S.authenticated_at.type),
            )
            .where(_D.uuid == bindparam("uuid"), _D.token_version == bindparam("version"))
            # FOR SHARE (PostgreSQL): wait for a revocation writing the row, then re-check
            # the version, so a session is never remembered past a committed revoke.
            .with_for_update(read=True),
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[_S.device_uuid, _S.client_id],
            set_={
                "token_version": upsert.excluded.token_version,
                "authenticated_at": upsert.excluded.authenticated_at,
            },
        )
        keep = (
            select(_S.client_id)
            .where(_S.device_uuid == bindparam("uuid"))
            .order_by(_S.authenticated_at.desc(), _S.client_id)
            .limit(SESSIONS_PER_DEVICE)
        )
        prune = delete(_SESSIONS).where(
            _S.device_uuid == bindparam("uuid"), _S.client_id.not_in(keep)
        )
        _SESSION_STATEMENTS[dialect] = (upsert, prune)
    return _SESSION_STATEMENTS[dialect]


def remember_session(state: DeviceState, clientid: str) -> DeviceState | None:
    """`state` with `clientid` remembered at its token version (written only when
    `needs_recording`), or None when a revocation committed since `state` was read."""
    if not needs_recording(state, clientid):
        return state
    # Pruning is only needed when this may be a 17th: most devices have one or two.
    prune = clientid not in state.sessions and len(state.sessions) >= SESSIONS_PER_DEVICE
    session = record_session(state.uuid, clientid, state.token_version, prune=prune)
    return None if session is None else state.with_session(clientid, session)


def record_session(
    uuid: str, clientid: str, token_version: int, prune: bool = False
) -> Session | None:
    """Remember that `clientid` authenticated with `token_version`; with `prune`, forget
    the least recently authenticated sessions beyond SESSIONS_PER_DEVICE.

    Written only while the device is still at that version (one `INSERT … SELECT … WHERE
    token_version = v … ON CONFLICT DO UPDATE`): None when a revocation committed since
    the caller read it. Without `prune` the upsert runs alone in autocommit (no BEGIN and
    COMMIT round trips). Concurrent logins of new client ids may leave a few more than 16
    rows for a moment; the next new one prunes them.
    """
    now = utcnow()
    upsert, prune_statement = _session_statements(db.engine.dialect.name)
    params = {"uuid": uuid, "clientid": clientid, "version": token_version, "now": now}
    # preserve_rowcount: SQLAlchemy keeps an INSERT's rowcount only when asked.
    options = {"preserve_rowcount": True}
    try:
        if prune:
            with db.engine.begin() as conn:
                if conn.execute(upsert, params, execution_options=options).rowcount != 1:
                    return None
                conn.execute(prune_statement, {"uuid": uuid})
        else:
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if conn.execute(upsert, params, execution_options=options).rowcount != 1:
                    return None
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(type(exc).__name__) from None
    return Session(token_version, now)
