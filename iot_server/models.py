"""The single model module: owners and devices. The pinger imports it too."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
)
from sqlalchemy import true as sa_true
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .extensions import db

MASTER = "master"
AGENT = "agent"
#: The longest device name an owner may set.
DEVICE_NAME_MAX = 64
#: Unicode category Cc: C0 controls, DEL and C1 controls (never in a device name).
CONTROL_CHARACTERS = "\x00-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
#: The longest MQTT client id the hooks remember (MQTT 3.1.1 allows 65535 bytes; EMQX's
#: default `max_clientid_len` is 65535 too, but no real firmware comes near 256).
CLIENT_ID_MAX = 256
#: Authenticated client ids remembered per device; a new one beyond this forgets the least
#: recently authenticated (SPEC.md, "Sessions").
SESSIONS_PER_DEVICE = 16


def utcnow() -> datetime:
    """Timezone-aware now, the one clock of the models."""
    return datetime.now(UTC)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a `Z`, or None: how every answer writes a time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, on every database.

    PostgreSQL keeps the zone (`timestamptz`); SQLite stores naive text, so values are
    converted to UTC on the way in and marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def is_storable(value: str) -> bool:
    """True when the string has no NUL and encodes as UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_device_name(value: str) -> bool:
    """A name an owner may give a device: 1-64 characters of storable, printable text."""
    return 1 <= len(value) <= DEVICE_NAME_MAX and is_storable(value) and not _CONTROL.search(value)


def is_registered(kind: str, owner_id: int | None, master_uuid: str | None) -> bool:
    """A master is registered once claimed; an agent once linked to a master."""
    return owner_id is not None if kind == MASTER else master_uuid is not None


class Owner(db.Model):
    """A user account that claims masters and links agents to them."""

    __tablename__ = "owners"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stored lowercase: usernames are case-insensitive (SPEC.md, "Owner API").
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # Owner tokens carry it: logout, a password change, disable and `flask users revoke`
    # bump it, which ends every earlier token at once.
    token_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    devices: Mapped[list[Device]] = relationship(back_populates="owner")

    def __repr__(self) -> str:
        return f"<Owner {self.username}>"


class Device(db.Model):
    """A master controller or an agent sub-device, identified by its lowercase uuid."""

    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint("kind IN ('master', 'agent')", name="ck_devices_kind"),
        CheckConstraint("token_version >= 1", name="ck_devices_token_version"),
    )

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(6))
    name: Mapped[str | None] = mapped_column(String(DEVICE_NAME_MAX))
    # Set for a claimed master; indexed for "my devices".
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("owners.id", ondelete="SET NULL"), index=True
    )
    # Set for a linked agent; indexed for "the agents of this master" (hooks, ACL).
    master_uuid: Mapped[str | None] = mapped_column(
        ForeignKey("devices.uuid", ondelete="SET NULL"), index=True
    )
    token_version: Mapped[int] = mapped_column(Integer, default=1)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When it was first claimed (master) or linked (agent): a device that never was has
    # never had a token, and is forgotten after a week (`devices.prune_unregistered`).
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    owner: Mapped[Owner | None] = relationship(back_populates="devices")
    master: Mapped[Device | None] = relationship(remote_side=[uuid], back_populates="agents")
    agents: Mapped[list[Device]] = relationship(
        back_populates="master", order_by="Device.created_at"
    )
    # The ORM deletes them with the device (SQLite enforces no foreign keys here).
    sessions: Mapped[list[DeviceSession]] = relationship(
        back_populates="device", cascade="all, delete-orphan"
    )

    @property
    def is_registered(self) -> bool:
        """A master is registered once claimed; an agent once linked to a master."""
        return is_registered(self.kind, self.owner_id, self.master_uuid)

    def __repr__(self) -> str:
        return f"<Device {self.kind} {self.uuid}>"


class ConsoleSession(db.Model):
    """A browser signed in to the owner console. Signing out deletes the row, so a copy of
    the cookie stops working; the row also ends at `expires_at`."""

    __tablename__ = "console_sessions"

    # SHA-256 of the random id the (signed) cookie carries: the table holds no usable id.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    # The owner's token version at sign-in: logout-all, a password change and `flask users
    # revoke|disable` bump it, which ends this session as it ends the owner's API tokens.
    owner_token_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Indexed for the sweep of expired sessions at each sign-in.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    def __repr__(self) -> str:
        return f"<ConsoleSession owner={self.owner_id}>"


class DeviceSession(db.Model):
    """An MQTT client id the broker hooks authenticated for a device, with the token
    version it logged in with: at most `SESSIONS_PER_DEVICE` per device.

    Topic checks accept a session only while its version is the device's current one, so
    a revocation ends every session even if a row outlives it; revoke, disable, release
    and unlink delete the rows and ask EMQX to kick each client id.
    """

    __tablename__ = "device_sessions"

    device_uuid: Mapped[str] = mapped_column(
        ForeignKey("devices.uuid", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(String(CLIENT_ID_MAX), primary_key=True)
    token_version: Mapped[int] = mapped_column(Integer)
    authenticated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    device: Mapped[Device] = relationship(back_populates="sessions")

    def __repr__(self) -> str:
        return f"<DeviceSession {self.device_uuid} {self.client_id}>"
