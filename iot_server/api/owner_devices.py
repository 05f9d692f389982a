"""Blueprint `owner_devices`: an owner lists, renames, claims, links and revokes devices.

Every route needs `Authorization: Bearer <owner token>`. Another owner's device answers
404 (never 403), except a claim of someone else's master, which is 409 so the claimer
learns why. The rules themselves live in `devices`; this module parses and shapes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, jsonify, request
from sqlalchemy import or_, select

from .. import devices, tokens
from ..errors import ApiError
from ..extensions import db
from ..models import MASTER, Device, Owner
from . import validation
from .validation import Text

bp = Blueprint("owner_devices", __name__)

#: A device seen within this window is `online` (SPEC.md, "MQTT behaviour").
ONLINE_WINDOW = timedelta(seconds=60)
NAME_MAX = 64
RENAME_FIELDS = {"name": Text(min_length=1, max_length=NAME_MAX, nullable=True, printable=True)}


def current_owner() -> Owner:
    """The owner whose token authorised this request; 403 for a missing or bad one."""
    try:
        claims = tokens.verify(
            tokens.bearer_token(request.headers.get("Authorization")), tokens.OWNER
        )
        owner_id = int(claims["sub"])
    except (tokens.InvalidToken, ValueError):
        raise ApiError(403, "missing, invalid or expired owner token") from None
    owner = db.session.get(Owner, owner_id)
    if owner is None:
        raise ApiError(403, "missing, invalid or expired owner token")
    return owner


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a `Z`, or None. SQLite hands back naive datetimes: they are UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_online(last_seen_at: datetime | None, now: datetime) -> bool:
    """Seen within the last minute."""
    if last_seen_at is None:
        return False
    if last_seen_at.tzinfo is None:
        last_seen_at = last_seen_at.replace(tzinfo=UTC)
    return now - last_seen_at <= ONLINE_WINDOW


def serialize(device: Device, agents: list[str] | None = None, now: datetime | None = None) -> dict:
    """The owner API's view of a device; `agents` overrides the relationship (bulk lists)."""
    now = now or datetime.now(UTC)
    if device.kind == MASTER:
        agent_uuids = agents if agents is not None else [a.uuid for a in device.agents]
    else:
        agent_uuids = []
    return {
        "uuid": device.uuid,
        "kind": device.kind,
        "name": device.name,
        "online": is_online(device.last_seen_at, now),
        "last_seen_at": iso_utc(device.last_seen_at),
        "master": device.master_uuid if device.kind != MASTER else None,
        "agents": agent_uuids,
    }


def device_answer(device: Device, status: int = 200):
    """`{"c":"OK","device":{…}}` with the given status."""
    return jsonify(c="OK", device=serialize(device)), status


def owned_master(uuid: str, owner: Owner) -> Device:
    """The owner's master at `uuid`; 404 when not theirs, 400 when it is their agent."""
    device = devices.owned_device(uuid, owner)
    if device.kind != MASTER:
        raise ApiError(400, "the first device is not a master")
    return device


@bp.get("")
def list_devices():
    """The owner's masters and their agents, each an entry, oldest first."""
    owner = current_owner()
    masters = select(Device.uuid).where(Device.owner_id == owner.id, Device.kind == MASTER)
    rows = (
        db.session.execute(
            select(Device)
            .where(or_(Device.uuid.in_(masters), Device.master_uuid.in_(masters)))
            .order_by(Device.created_at, Device.uuid)
        )
        .scalars()
        .all()
    )
    # One query for all: each master's agent list is built from the same rows.
    agents_of: dict[str, list[str]] = {}
    for row in rows:
        if row.kind != MASTER and row.master_uuid:
            agents_of.setdefault(row.master_uuid, []).append(row.uuid)
    now = datetime.now(UTC)
    entries = [serialize(row, agents_of.get(row.uuid, []), now) for row in rows]
    return jsonify(c="OK", devices=entries)


@bp.get("/<uuid>")
def show_device(uuid: str):
    """One of the owner's devices."""
    owner = current_owner()
    return device_answer(devices.owned_device(validation.path_uuid(uuid), owner))


@bp.patch("/<uuid>")
def rename_device(uuid: str):
    """Set the device's name (1-64 characters), or clear it with null."""
    owner = current_owner()
    device = devices.owned_device(validation.path_uuid(uuid), owner)
    data = validation.body(RENAME_FIELDS)
    device.name = data["name"]
    db.session.commit()
    return device_answer(device)


@bp.post("/<uuid>/claim")
def claim_device(uuid: str):
    """Claim a master: 201 when this creates it, 200 when it existed or is already ours."""
    owner = current_owner()
    device, created = devices.claim(validation.path_uuid(uuid), owner)
    return device_answer(device, 201 if created else 200)


@bp.delete("/<uuid>/claim")
def release_device(uuid: str):
    """Release a master: its agents are unlinked, and it and they are revoked."""
    owner = current_owner()
    devices.release(owned_master(validation.path_uuid(uuid), owner))
    return jsonify(c="OK")


@bp.put("/<master>/agents/<agent>")
def link_agent(master: str, agent: str):
    """Link an agent (created when unknown) to the owner's master: 201 when created."""
    owner = current_owner()
    master_uuid = validation.path_uuid(master, "master")
    agent_uuid = validation.path_uuid(agent, "agent")
    device, created = devices.link(owned_master(master_uuid, owner).uuid, agent_uuid)
    return device_answer(device, 201 if created else 200)


@bp.delete("/<master>/agents/<agent>")
def unlink_agent(master: str, agent: str):
    """Unlink an agent from the owner's master and revoke it."""
    owner = current_owner()
    master_device = owned_master(validation.path_uuid(master, "master"), owner)
    agent_uuid = validation.path_uuid(agent, "agent")
    agent_device = devices.get(agent_uuid)
    if (
        agent_device is not None
        and agent_device.kind == MASTER
        and devices.owner_of(agent_device) == owner.id
    ):
        raise ApiError(400, "the second device is not an agent")
    if agent_device is None:
        raise ApiError(404, "agent not linked to this master")
    devices.unlink(master_device, agent_device)
    return jsonify(c="OK")


@bp.post("/<uuid>/revoke")
def revoke_device(uuid: str):
    """Invalidate the device's tokens and cut its live MQTT session."""
    owner = current_owner()
    device = devices.owned_device(validation.path_uuid(uuid), owner)
    devices.revoke(device)
    return device_answer(device)
