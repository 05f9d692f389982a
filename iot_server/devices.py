"""The devices service: registration, claim, link, revoke. No HTTP in here.

The auth blueprint, the owner API, the broker hooks and the admin CLI all call these
functions, so each rule lives in one place. Failures raise `ApiError` with the SPEC's
result code.
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime, timedelta

from blinker import Namespace
from flask import current_app
from sqlalchemy import (
    CompoundSelect,
    Row,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import delete as delete_rows
from sqlalchemy.exc import IntegrityError

from .errors import ApiError
from .extensions import db
from .models import AGENT, MASTER, Device, DeviceSession, Owner, UTCDateTime, utcnow

log = logging.getLogger("iot_server.devices")

#: Sent with `client_ids` after a commit that ended those MQTT sessions (revoke, release,
#: unlink, disable) or changed what they may use (link): the broker package connects the
#: EMQX API client to it, so this service does not depend on any broker.
sessions_cut = Namespace().signal("sessions-cut")

#: A device seen within this window is online (SPEC.md, "MQTT behaviour").
ONLINE_WINDOW = timedelta(seconds=60)
#: Bounds (SPEC.md, "Owner API"): an ACL grows with the agents, a list with the masters.
MAX_AGENTS_PER_MASTER = 64
MAX_MASTERS_PER_OWNER = 1000
#: A device created by a registration call and never claimed or linked is forgotten then.
UNREGISTERED_RETENTION = timedelta(days=7)
#: Tokens issued this long before a device's row was created are its deleted namesake's
#: (clocks of several instances may differ by a little; JWT_DECODE_LEEWAY is the same).
TOKEN_CLOCK_SKEW = 30

#: Why a device may not use a token: `token_refusal()`'s answers, also written in logs.
UNKNOWN = "unknown device"
REVOKED = "token revoked"
OTHER_KIND = "token of another kind"
DISABLED = "device disabled"
NOT_REGISTERED = "device not registered"


def token_refusal(device, claims: dict | None = None) -> str | None:
    """Why `device` may not use a device token (with `claims`, that token), or None.

    The one rule behind registration, `/mqtt`, broker logins and topic checks. `device` is
    a `Device` row or anything with its fields (the hooks' cached state), or None.
    """
    if device is None:
        return UNKNOWN
    if claims is not None:
        if device.token_version != claims["ver"] or issued_before(claims, device.created_at):
            return REVOKED
        if claims.get("kind") not in (None, device.kind):
            return OTHER_KIND
    if not device.enabled:
        return DISABLED
    if not device.is_registered:
        return NOT_REGISTERED
    return None


def issued_before(claims: dict, created_at: datetime | None) -> bool:
    """True for a token issued before the device row existed: a deleted device of the same
    uuid had it (a new row starts again at token version 1)."""
    issued = claims.get("iat")
    if created_at is None or not isinstance(issued, int | float):
        return False
    return issued + TOKEN_CLOCK_SKEW < created_at.timestamp()


def token_holder(claims: dict) -> Device | None:
    """The device a verified device token stands for, while the token may be used."""
    device = get(claims["sub"])
    return device if token_refusal(device, claims) is None else None


def kind_for_secret(secret: str | None) -> str | None:
    """The device kind a registration secret stands for, compared in constant time.

    Both secrets are always compared, so the time taken does not tell which one is close.
    """
    given = (secret or "").encode()
    config = current_app.config
    is_master = hmac.compare_digest(given, (config["DEVICE_MASTER_SECRET_KEY"] or "").encode())
    is_agent = hmac.compare_digest(given, (config["DEVICE_AGENT_SECRET_KEY"] or "").encode())
    if not secret:
        return None
    if is_master:
        return MASTER
    if is_agent:
        return AGENT
    return None


def get(uuid: str) -> Device | None:
    """The device with this (normalised) uuid, if known."""
    return db.session.get(Device, uuid)


def get_or_create(uuid: str, kind: str) -> tuple[Device, bool]:
    """The device, created with `kind` when unknown; tolerant of a concurrent insert."""
    device = get(uuid)
    if device is not None:
        return device, False
    device = Device(uuid=uuid, kind=kind)
    db.session.add(device)
    try:
        db.session.commit()
    except IntegrityError:
        # Another request created it between our read and our insert.
        db.session.rollback()
        return db.session.get(Device, uuid), False
    log.info("device created", extra={"device": uuid, "kind": kind})
    return device, True


def check_can_have_token(device: Device, kind: str) -> None:
    """Raise the SPEC's answer when `device` may not get a token with a `kind` secret."""
    if device.kind != kind:
        raise ApiError(403, "secret does not match the device kind")
    refusal = token_refusal(device)
    if refusal == NOT_REGISTERED:
        what = "claimed by an owner" if device.kind == MASTER else "linked to a master"
        raise ApiError(401, f"device not yet {what}")
    if refusal is not None:
        raise ApiError(403, refusal)


def owned_device(uuid: str, owner: Owner) -> Device:
    """The owner's device (a master it claimed or an agent of one); 404 for any other."""
    device = get(uuid)
    if device is None or owner_of(device) != owner.id:
        raise ApiError(404, "no such device")
    return device


def owned_master(uuid: str, owner: Owner) -> Device:
    """The owner's master at `uuid`; 404 when not theirs, 400 when it is their agent."""
    device = owned_device(uuid, owner)
    if device.kind != MASTER:
        raise ApiError(400, "the first device is not a master")
    return device


def owned_devices(
    owner: Owner, limit: int | None = None, after: tuple[datetime, str] | None = None
) -> list[Device]:
    """The owner's masters and their agents, oldest first (then by uuid), in one query: at
    most `limit` of them, those after the `(created_at, uuid)` position `after`."""
    masters = select(Device.uuid).where(Device.owner_id == owner.id, Device.kind == MASTER)
    query = select(Device).where(or_(Device.uuid.in_(masters), Device.master_uuid.in_(masters)))
    if after is not None:
        created_at, uuid = after
        query = query.where(
            or_(
                Device.created_at > created_at,
                and_(Device.created_at == created_at, Device.uuid > uuid),
            )
        )
    query = query.order_by(Device.created_at, Device.uuid)
    if limit is not None:
        query = query.limit(limit)
    return list(db.session.execute(query).scalars())


def agents_of(master_uuids: list[str]) -> dict[str, list[str]]:
    """Each master's agent uuids, oldest first, in one query."""
    found: dict[str, list[str]] = {uuid: [] for uuid in master_uuids}
    if master_uuids:
        rows = db.session.execute(
            select(Device.uuid, Device.master_uuid)
            .where(Device.master_uuid.in_(master_uuids))
            .order_by(Device.created_at, Device.uuid)
        )
        for uuid, master_uuid in rows:
            found[master_uuid].append(uuid)
    return found


def listing(owner: Owner) -> list[Row]:
    """The owner's masters and their agents as light rows (uuid, kind, name, master_uuid,
    last_seen_at, created_at), oldest first, in one indexed statement: no ORM objects, for
    pages that list thousands."""
    rows = db.session.execute(_LISTING, {"owner_id": owner.id}).all()
    return sorted(rows, key=lambda row: (row.created_at, row.uuid))


def presence(owner: Owner) -> list[tuple[str, datetime | None]]:
    """(uuid, last_seen_at) of each of the owner's devices, in one statement."""
    return [(uuid, seen) for uuid, seen in db.session.execute(_PRESENCE, {"owner_id": owner.id})]


def presence_query(owner_id: int) -> CompoundSelect:
    """The statement behind `presence()`, bound to an owner (to EXPLAIN or run by hand)."""
    return _PRESENCE.params(owner_id=owner_id)


def _owned_columns(*names: str) -> CompoundSelect:
    """Columns of an owner's devices in two halves, each through an index: the masters by
    `owner_id`, their agents by `master_uuid` (an `OR` of the two reads the whole table)."""
    devices, master = Device.__table__, Device.__table__.alias("master")
    masters = select(*(devices.c[name] for name in names)).where(
        devices.c.owner_id == bindparam("owner_id"), devices.c.kind == MASTER
    )
    agents = (
        select(*(devices.c[name] for name in names))
        .join(master, devices.c.master_uuid == master.c.uuid)
        .where(master.c.owner_id == bindparam("owner_id"), master.c.kind == MASTER)
    )
    return union_all(masters, agents)


# Built once, so each call only binds the owner id (building them costs more than running).
_PRESENCE = _owned_columns("uuid", "last_seen_at")
_LISTING = _owned_columns("uuid", "kind", "name", "master_uuid", "last_seen_at", "created_at")


def is_online(device: Device, now: datetime | None = None) -> bool:
    """Heard (a PING or a PONG) within the last minute."""
    return seen_recently(device.last_seen_at, now)


def seen_recently(last_seen_at: datetime | None, now: datetime | None = None) -> bool:
    """True when `last_seen_at` falls within the online window before `now`."""
    if last_seen_at is None:
        return False
    return (now or datetime.now(UTC)) - last_seen_at <= ONLINE_WINDOW


def owner_of(device: Device) -> int | None:
    """The id of the owner a device belongs to, through its master for an agent."""
    if device.kind == MASTER:
        return device.owner_id
    return device.master.owner_id if device.master is not None else None


def claim(uuid: str, owner: Owner) -> tuple[Device, bool]:
    """Give a master to `owner`; returns (device, created). 409 when someone else has it,
    or when the owner already holds MAX_MASTERS_PER_OWNER.

    Atomic: the row is taken with `UPDATE … WHERE owner_id IS NULL`, so of two owners racing
    for one uuid exactly one wins. The owner's row is locked meanwhile (PostgreSQL), so two
    claims of one owner cannot both pass the bound.
    """
    device, created = get_or_create(uuid, MASTER)
    if device.kind != MASTER:
        raise ApiError(400, "an agent cannot be claimed; link it to a master")
    if device.owner_id == owner.id:
        return device, created
    if device.owner_id is not None:
        raise ApiError(409, "device already claimed by another owner")
    _lock(Owner, Owner.id == owner.id)
    held = db.session.scalar(
        select(func.count())
        .select_from(Device)
        .where(Device.owner_id == owner.id, Device.kind == MASTER)
    )
    if held >= MAX_MASTERS_PER_OWNER:
        db.session.rollback()
        raise ApiError(409, f"an owner may hold at most {MAX_MASTERS_PER_OWNER} masters")
    taken = db.session.execute(
        update(Device)
        .where(Device.uuid == uuid, Device.kind == MASTER, Device.owner_id.is_(None))
        .values(owner_id=owner.id, registered_at=_first_registration())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    db.session.refresh(device)
    if taken != 1:
        if device.owner_id == owner.id:  # the same owner's other request won
            return device, created
        raise ApiError(409, "device already claimed by another owner")
    log.info("device claimed", extra={"device": uuid, "owner": owner.username})
    return device, created


def release(device: Device) -> None:
    """Unclaim a master: its agents are unlinked, and it and they are revoked."""
    sessions = []
    for agent in list(device.agents):
        agent.master_uuid = None
        sessions += _revoke(agent)
    device.owner_id = None
    # The next owner names it anew.
    device.name = None
    sessions += _revoke(device)
    db.session.commit()
    log.info("device released", extra={"device": device.uuid})
    _disconnect(sessions)


def link(master_uuid: str, agent_uuid: str) -> tuple[Device, bool]:
    """Link an agent (created when unknown) to a master; returns (agent, created). 409 when
    the agent is linked elsewhere, or the master has MAX_AGENTS_PER_MASTER already.

    Atomic like `claim`: `UPDATE … WHERE master_uuid IS NULL`, with the master's row locked
    (PostgreSQL) while its agents are counted.
    """
    master = get(master_uuid)
    if master is None:
        raise ApiError(404, "no such master")
    if master.kind != MASTER:
        raise ApiError(400, "the first device is not a master")
    agent, created = get_or_create(agent_uuid, AGENT)
    if agent.kind != AGENT:
        raise ApiError(400, "the second device is not an agent")
    if agent.master_uuid == master.uuid:
        return agent, created
    if agent.master_uuid is not None:
        raise ApiError(409, "agent already linked to another master")
    _lock(Device, Device.uuid == master.uuid)
    linked = db.session.scalar(
        select(func.count()).select_from(Device).where(Device.master_uuid == master.uuid)
    )
    if linked >= MAX_AGENTS_PER_MASTER:
        db.session.rollback()
        raise ApiError(409, f"a master may have at most {MAX_AGENTS_PER_MASTER} agents")
    taken = db.session.execute(
        update(Device)
        .where(Device.uuid == agent.uuid, Device.kind == AGENT, Device.master_uuid.is_(None))
        .values(master_uuid=master.uuid, registered_at=_first_registration())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    db.session.refresh(agent)
    if taken != 1:
        if agent.master_uuid == master.uuid:
            return agent, created
        raise ApiError(409, "agent already linked to another master")
    log.info("agent linked", extra={"device": agent.uuid, "master": master.uuid})
    # EMQX's ACL snapshot of the master lacks the new agent's topic until it reconnects.
    _disconnect(session_client_ids(master))
    return agent, created


def unlink(master: Device, agent_uuid: str) -> None:
    """Unlink an agent from its master and revoke it; 404 unless it is linked there, 400
    when the uuid is one of the same owner's masters."""
    agent = get(agent_uuid)
    if agent is not None and agent.kind == MASTER and owner_of(agent) == master.owner_id:
        raise ApiError(400, "the second device is not an agent")
    if agent is None or agent.master_uuid != master.uuid:
        raise ApiError(404, "agent not linked to this master")
    agent.master_uuid = None
    sessions = _revoke(agent) + session_client_ids(master)
    db.session.commit()
    log.info("agent unlinked", extra={"device": agent.uuid, "master": master.uuid})
    _disconnect(sessions)


def revoke(device: Device) -> None:
    """Invalidate every token of the device and cut all its live MQTT sessions."""
    sessions = _revoke(device)
    db.session.commit()
    log.info("device revoked", extra={"device": device.uuid})
    _disconnect(sessions)


def set_enabled(device: Device, enabled: bool) -> None:
    """Disable (refuse tokens and connections) or enable a device."""
    device.enabled = enabled
    sessions = [] if enabled else _revoke(device)
    db.session.commit()
    log.info("device %s", "enabled" if enabled else "disabled", extra={"device": device.uuid})
    _disconnect(sessions)


def delete(device: Device) -> None:
    """Forget a device: a master's agents are unlinked and revoked first (as on release),
    and its live sessions are cut. A device of the same uuid calling again starts anew, and
    no token of the deleted one works for it (`issued_before`)."""
    sessions = []
    for agent in list(device.agents):
        agent.master_uuid = None
        sessions += _revoke(agent)
    sessions += session_client_ids(device)
    db.session.delete(device)
    db.session.commit()
    log.info("device deleted", extra={"device": device.uuid})
    _disconnect(sessions)


def prune_unregistered(now: datetime | None = None) -> int:
    """Forget devices created by a registration call more than a week ago and never claimed
    or linked since (they never had a token). Returns how many."""
    cutoff = (now or datetime.now(UTC)) - UNREGISTERED_RETENTION
    agents_of = select(Device.master_uuid).where(Device.master_uuid.is_not(None))
    result = db.session.execute(
        delete_rows(Device)
        .where(
            Device.registered_at.is_(None),
            Device.owner_id.is_(None),
            Device.master_uuid.is_(None),
            Device.created_at < cutoff,
            Device.uuid.not_in(agents_of),
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if result.rowcount:
        log.info("forgot %d never-registered devices", result.rowcount)
    return result.rowcount


def _first_registration():
    """`registered_at` as an UPDATE sets it: kept when set, else now."""
    return func.coalesce(Device.registered_at, literal(utcnow(), UTCDateTime()))


def _lock(model, condition) -> None:
    """Lock a row until the commit (`SELECT … FOR UPDATE`; SQLite writes one at a time)."""
    db.session.execute(select(model).where(condition).with_for_update()).first()


def session_client_ids(device: Device) -> list[str]:
    """The client ids of the device's remembered sessions at its current token version."""
    query = select(DeviceSession.client_id).where(
        DeviceSession.device_uuid == device.uuid,
        DeviceSession.token_version == device.token_version,
    )
    return list(db.session.execute(query).scalars())


def _revoke(device: Device) -> list[str]:
    """Bump the token version and forget every session; returns their client ids to cut.

    The caller commits. The version is written first, so a login racing this one either
    committed its session before (deleted here, and kicked) or finds the new version and
    is refused (`broker.device_state.record_session` locks the device row to check it).
    With the sessions gone, go-auth topic checks of each fail (see `broker.decisions`),
    and `sessions_cut` asks EMQX to disconnect each.
    """
    device.token_version += 1
    db.session.flush()
    forget = (
        delete_rows(DeviceSession)
        .where(DeviceSession.device_uuid == device.uuid)
        .returning(DeviceSession.client_id)
    )
    return sorted(db.session.execute(forget).scalars())


def _disconnect(client_ids: list[str]) -> None:
    """Announce the sessions to cut (EMQX, when its API is configured), after the commit."""
    if client_ids:
        sessions_cut.send(current_app._get_current_object(), client_ids=client_ids)
