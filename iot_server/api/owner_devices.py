"""Blueprint `owner_devices`: an owner lists, renames, claims, links and revokes devices.

Every route needs `Authorization: Bearer <owner token>`. Another owner's device answers
404 (never 403), except a claim of someone else's master, which is 409 so the claimer
learns why. The rules themselves live in `devices`; this module parses and shapes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, jsonify, request

from .. import devices, tokens
from ..errors import ApiError
from ..extensions import db
from ..identifiers import parse_uuid
from ..models import DEVICE_NAME_MAX, MASTER, Device, iso_utc
from . import validation
from .access import require_token
from .validation import Text

bp = Blueprint("owner_devices", __name__)

RENAME_FIELDS = {
    "name": Text(min_length=1, max_length=DEVICE_NAME_MAX, nullable=True, printable=True)
}


def serialize(device: Device, agents: list[str] | None = None, now: datetime | None = None) -> dict:
    """The owner API's view of a device; `agents` overrides the relationship (bulk lists)."""
    if device.kind == MASTER:
        agent_uuids = agents if agents is not None else [a.uuid for a in device.agents]
    else:
        agent_uuids = []
    return {
        "uuid": device.uuid,
        "kind": device.kind,
        "name": device.name,
        "online": devices.is_online(device, now),
        "last_seen_at": iso_utc(device.last_seen_at),
        "master": device.master_uuid if device.kind != MASTER else None,
        "agents": agent_uuids,
    }


def device_answer(device: Device, status: int = 200):
    """`{"c":"OK","device":{…}}` with the given status."""
    return jsonify(c="OK", device=serialize(device)), status


#: `GET /devices` pages (SPEC.md, "Bounds").
PAGE_DEFAULT, PAGE_MAX = 100, 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@bp.get("")
def list_devices():
    """The owner's masters and their agents, each an entry, oldest first, a page at a time:
    `?limit=` (1-200, default 100) and `?cursor=` (the previous page's `next`)."""
    owner = require_token(tokens.OWNER)
    limit = page_limit(request.args.get("limit"))
    after = parse_cursor(request.args.get("cursor"))
    rows = devices.owned_devices(owner, limit=limit + 1, after=after)
    page, more = rows[:limit], len(rows) > limit
    # One more query for all: each master's agents, wherever they fall in the pages.
    agents = devices.agents_of([row.uuid for row in page if row.kind == MASTER])
    now = datetime.now(UTC)
    entries = [serialize(row, agents.get(row.uuid, []), now) for row in page]
    return jsonify(c="OK", devices=entries, next=cursor_after(page[-1]) if more else None)


def page_limit(value: str | None) -> int:
    """`?limit=`: an integer 1-200 (default 100); 400 otherwise."""
    if value is None:
        return PAGE_DEFAULT
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= PAGE_MAX):
        raise ApiError(400, f"limit must be an integer from 1 to {PAGE_MAX}")
    return int(value)


def cursor_after(device: Device) -> str:
    """The position after `device`: its creation time in microseconds, a dot, its uuid."""
    micros = (device.created_at - EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{device.uuid}"


def parse_cursor(value: str | None) -> tuple[datetime, str] | None:
    """A `cursor_after()` value as `(created_at, uuid)`; 400 when it is not one."""
    if value is None:
        return None
    micros, _, uuid = value.partition(".")
    if not (micros.isascii() and micros.isdigit() and len(micros) <= 17) or not parse_uuid(uuid):
        raise ApiError(400, "cursor must be the `next` of a previous page")
    created_at = EPOCH + timedelta(microseconds=int(micros))
    return created_at, parse_uuid(uuid)


@bp.get("/<uuid>")
def show_device(uuid: str):
    """One of the owner's devices."""
    owner = require_token(tokens.OWNER)
    return device_answer(devices.owned_device(validation.require_uuid(uuid), owner))


@bp.patch("/<uuid>")
def rename_device(uuid: str):
    """Set the device's name (1-64 characters), or clear it with null."""
    owner = require_token(tokens.OWNER)
    device = devices.owned_device(validation.require_uuid(uuid), owner)
    data = validation.body(RENAME_FIELDS)
    device.name = data["name"]
    db.session.commit()
    return device_answer(device)


@bp.post("/<uuid>/claim")
def claim_device(uuid: str):
    """Claim a master: 201 when this creates it, 200 when it existed or is already ours."""
    owner = require_token(tokens.OWNER)
    device, created = devices.claim(validation.require_uuid(uuid), owner)
    return device_answer(device, 201 if created else 200)


@bp.delete("/<uuid>/claim")
def release_device(uuid: str):
    """Release a master: its agents are unlinked, and it and they are revoked."""
    owner = require_token(tokens.OWNER)
    devices.release(devices.owned_master(validation.require_uuid(uuid), owner))
    return jsonify(c="OK")


@bp.put("/<master>/agents/<agent>")
def link_agent(master: str, agent: str):
    """Link an agent (created when unknown) to the owner's master: 201 when created."""
    owner = require_token(tokens.OWNER)
    master_uuid = validation.require_uuid(master, "master")
    agent_uuid = validation.require_uuid(agent, "agent")
    device, created = devices.link(devices.owned_master(master_uuid, owner).uuid, agent_uuid)
    return device_answer(device, 201 if created else 200)


@bp.delete("/<master>/agents/<agent>")
def unlink_agent(master: str, agent: str):
    """Unlink an agent from the owner's master and revoke it."""
    owner = require_token(tokens.OWNER)
    master_device = devices.owned_master(validation.require_uuid(master, "master"), owner)
    devices.unlink(master_device, validation.require_uuid(agent, "agent"))
    return jsonify(c="OK")


@bp.post("/<uuid>/revoke")
def revoke_device(uuid: str):
    """Invalidate the device's tokens and cut its live MQTT session."""
    owner = require_token(tokens.OWNER)
    device = devices.owned_device(validation.require_uuid(uuid), owner)
    devices.revoke(device)
    return device_answer(device)
