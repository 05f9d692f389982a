"""The decisions behind every broker hook: who calls, who connects, who touches which topic.

Both adapters (`emqx_hooks`, `mosquitto_hooks`) parse their broker's request, call
`caller_allowed()`, `authenticate()` or `authorize()` here, and shape the answer. Topic
rules live in `policy.py`.

Speed: a broker asks on every CONNECT, and go-auth/amqtt on every publish, subscribe and
delivery. So authentication reads the device and its agents in one indexed query and writes
only when the client id changed; authorization reads a per-process device-state cache that
lives `HOOK_CACHE_TTL` seconds (revocation and unlinking are visible within that bound);
repeated failed logins are answered from a negative cache for `AUTH_NEGATIVE_TTL` seconds.
A database failure denies, is logged, and is never cached.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import lru_cache

from flask import Flask, Request, current_app
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from .. import metrics, policy, tokens
from ..extensions import db
from ..identifiers import uuid_from_username
from ..models import MASTER, Device

log = logging.getLogger("iot_server.hooks")

ALLOW = "allow"
DENY = "deny"
IGNORE = "ignore"

#: Entries kept by each per-process cache; the oldest go first beyond it.
CACHE_MAX_ENTRIES = 10_000
#: A denial read from the state cache is re-read from the database at most this often,
#: so a reconnect with a new client id (served by another worker) is not refused for the
#: whole TTL, while a revoked session that keeps publishing cannot flood the database.
DENIED_STATE_RECHECK = 0.25
#: Repeated login denials of one username are summarised once per window.
DENIAL_LOG_WINDOW = 60.0
#: The longest client id we remember (`Device.mqtt_client_id`).
MAX_CLIENT_ID = 256

#: Monotonic clock of every cache; tests replace it to step over TTLs.
clock = time.monotonic


@dataclass(frozen=True)
class Decision:
    """The outcome of a hook question: allow, deny or ignore, and why (for logs)."""

    result: str
    reason: str = ""
    identity: policy.Identity | None = None
    expire_at: int | None = None

    @property
    def allowed(self) -> bool:
        """True for allow."""
        return self.result == ALLOW


@dataclass(frozen=True)
class DeviceState:
    """What authorization needs to know about a device, as read at `loaded_at`."""

    uuid: str
    kind: str
    token_version: int
    enabled: bool
    registered: bool
    client_id: str | None
    agents: frozenset[str]
    loaded_at: float

    def identity(self) -> policy.Identity:
        """The policy identity of this device."""
        return policy.device_identity(self.uuid, self.kind, self.agents)


class DatabaseUnavailable(Exception):
    """The hook could not read or write the database: deny, log, never cache."""


class TtlCache:
    """A small thread-safe LRU of key → (expires, value), bounded in size."""

    def __init__(self, max_entries: int = CACHE_MAX_ENTRIES):
        self.max_entries = max_entries
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, now: float):
        """The live value for `key`, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key, value, expires: float) -> None:
        """Remember `value` until `expires`, evicting the least recently used beyond the bound."""
        with self._lock:
            self._items[key] = (expires, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def discard(self, key) -> None:
        """Forget `key`."""
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class DenialLog:
    """Logs the first login denial of a username, then one summary per window with a count,
    so a device retrying every second writes a line a minute rather than one per retry."""

    def __init__(self, window: float = DENIAL_LOG_WINDOW, max_entries: int = CACHE_MAX_ENTRIES):
        self.window = window
        self.max_entries = max_entries
        self._windows: OrderedDict[str, list] = OrderedDict()  # username → [start, count]
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def denied(self, username: str, reason: str, device: str | None) -> None:
        """Record a denial; log it when it opens a window, else just count it."""
        now = clock()
        summaries = []
        with self._lock:
            if now - self._last_sweep >= self.window:
                summaries = self._sweep(now)
            entry = self._windows.get(username)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                first = False
            else:
                if entry is not None and entry[1]:
                    summaries.append((username, entry[1], now - entry[0]))
                self._windows[username] = [now, 0]
                self._windows.move_to_end(username)
                while len(self._windows) > self.max_entries:
                    self._windows.popitem(last=False)
                first = True
        for name, count, seconds in summaries:
            log.warning(
                "login denied %d more times for %s in the last %.0f s",
                count,
                name,
                seconds,
                extra={"username": name, "count": count},
            )
        if first:
            log.warning(
                "login denied for %s: %s",
                username,
                reason,
                extra={"username": username, "device": device, "reason": reason},
            )

    def _sweep(self, now: float) -> list[tuple[str, int, float]]:
        """Close every expired window (caller holds the lock); returns the summaries due."""
        self._last_sweep = now
        due = []
        for name in [n for n, (start, _) in self._windows.items() if now - start >= self.window]:
            start, count = self._windows.pop(name)
            if count:
                due.append((name, count, now - start))
        return due


class HookState:
    """The per-app caches of the hooks (one set per process and app)."""

    def __init__(self) -> None:
        self.negative = TtlCache()
        self.devices = TtlCache()
        self.tokens = TtlCache()
        self.denials = DenialLog()

    def clear(self) -> None:
        """Forget every cached answer."""
        self.negative.clear()
        self.devices.clear()
        self.tokens.clear()


def init_app(app: Flask) -> None:
    """Give the app its hook caches (idempotent: both hook blueprints call it)."""
    app.extensions.setdefault("iot_broker_auth", HookState())


def state() -> HookState:
    """The current app's hook caches."""
    return current_app.extensions["iot_broker_auth"]


# ---------------------------------------------------------------- who may call a hook


@lru_cache(maxsize=16)
def trusted_networks(spec: str) -> tuple:
    """Parse `HOOK_TRUSTED_NETWORKS` (comma-separated networks or addresses)."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    )


def is_trusted_address(remote_addr: str | None) -> bool:
    """True when the caller's address (after TRUSTED_PROXIES) is in a trusted network."""
    if not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    networks = trusted_networks(current_app.config["HOOK_TRUSTED_NETWORKS"] or "")
    return any(address in network for network in networks if network.version == address.version)


def secret_matches(given: object) -> bool:
    """`given` equals MQTT_SECRET_KEY, compared in constant time; never true when unset."""
    secret = current_app.config["MQTT_SECRET_KEY"] or ""
    candidate = given if isinstance(given, str) else ""
    matches = hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), secret.encode())
    return bool(secret) and bool(candidate) and matches


def caller_allowed(authorization: str | None, remote_addr: str | None) -> bool:
    """A hook caller presents `Bearer MQTT_SECRET_KEY`, or no Authorization header at all
    from a trusted network; a wrong header is refused even from a trusted network."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and secret_matches(token.strip())
    return is_trusted_address(remote_addr)


# ---------------------------------------------------------------- authentication


def authenticate(username: object, password: object, clientid: object) -> Decision:
    """Decide a CONNECT: a device with its current token, the service account, or ignore."""
    if not isinstance(username, str):
        return Decision(DENY, "malformed username")
    config = current_app.config
    if username == config["MQTT_SERVICE_USERNAME"]:
        if secret_matches(password):
            return Decision(ALLOW, identity=policy.SERVICE)
        return _login_denied(username, "wrong service password", None, None)
    uuid = uuid_from_username(username)
    if uuid is None:
        return Decision(IGNORE, "not a device or service username")
    if not isinstance(password, str) or not password:
        return _login_denied(username, "missing token", uuid, None)
    if not is_storable_client_id(clientid):
        # Not negatively cached: the same token with a sane client id must work at once.
        return _login_denied(username, "malformed client id", uuid, None)

    key = _credentials_key(username, password)
    hooks = state()
    if hooks.negative.get(key, clock()) is not None:
        hooks.denials.denied(username, "repeated failure (negative cache)", uuid)
        return Decision(DENY, "repeated failure")

    try:
        claims = verified_device_claims(password, key)
    except tokens.InvalidToken as exc:
        return _login_denied(username, f"invalid token ({exc})", uuid, key)
    if claims["sub"] != uuid:
        return _login_denied(username, "token of another device", uuid, key)

    try:
        device = load_device_state(uuid)
    except DatabaseUnavailable as exc:
        # Not cached: the device may be fine once the database is back.
        log.error("login denied for %s: database unavailable (%s)", username, exc)
        return Decision(DENY, "database unavailable")
    if device is None:
        return _login_denied(username, "unknown device", uuid, key)
    if device.token_version != claims["ver"]:
        return _login_denied(username, "token revoked", uuid, key)
    if claims.get("kind") not in (None, device.kind):
        return _login_denied(username, "token of another kind", uuid, key)
    if not device.enabled:
        return _login_denied(username, "device disabled", uuid, key)
    if not device.registered:
        return _login_denied(username, "device not registered", uuid, key)

    if device.client_id != clientid:
        try:
            recorded = record_client_id(uuid, clientid, device.token_version)
        except DatabaseUnavailable as exc:
            log.error("login denied for %s: database unavailable (%s)", username, exc)
            return Decision(DENY, "database unavailable")
        if not recorded:
            # Revoked (here or on another instance) since we read it: writing the client id
            # back would revive the session that the revocation has just cleared.
            return _login_denied(username, "token revoked", uuid, key)
        device = replace(device, client_id=clientid)
    hooks.devices.put(uuid, device, device.loaded_at + config["HOOK_CACHE_TTL"])
    return Decision(ALLOW, identity=device.identity(), expire_at=int(claims["exp"]))


def is_storable_client_id(clientid: object) -> bool:
    """A non-empty UTF-8 string that fits `Device.mqtt_client_id`."""
    if not isinstance(clientid, str) or not clientid or len(clientid) > MAX_CLIENT_ID:
        return False
    try:
        clientid.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in clientid


def verified_device_claims(token: str, key: bytes) -> dict:
    """`tokens.verify(token, DEVICE)`, remembered per (username, token) until the token
    expires: a device reconnecting with the same token skips the JWT decoding."""
    hooks = state()
    now = clock()
    claims = hooks.tokens.get(key, now)
    if claims is not None and claims["exp"] > time.time():
        return claims
    claims = tokens.verify(token, tokens.DEVICE)
    hooks.tokens.put(key, claims, now + max(0.0, claims["exp"] - time.time()))
    return claims


def _credentials_key(username: str, password: str) -> bytes:
    """The negative cache key: a digest, so no password is ever kept in memory."""
    # surrogatepass: JSON may carry lone surrogates, which plain UTF-8 cannot encode.
    raw = username + "\0" + password
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()


def _login_denied(username: str, reason: str, device: str | None, key: bytes | None) -> Decision:
    """Deny a login, remember the credentials in the negative cache, log it summarised."""
    hooks = state()
    if key is not None:
        ttl = current_app.config["AUTH_NEGATIVE_TTL"]
        if ttl > 0:
            hooks.negative.put(key, True, clock() + ttl)
    hooks.denials.denied(username, reason, device)
    return Decision(DENY, reason)


# ---------------------------------------------------------------- authorization


def authorize(
    username: object, clientid: object, actions: tuple[str, ...], topic: object
) -> Decision:
    """Decide whether the client may do every one of `actions` on `topic`.

    `ignore` for a username that is neither a device nor the service account.
    """
    if not actions or any(action not in policy.ACTIONS for action in actions):
        return Decision(DENY, "unknown action")
    if not isinstance(username, str):
        return Decision(DENY, "malformed username")
    if username == current_app.config["MQTT_SERVICE_USERNAME"]:
        return _decide_topic(policy.SERVICE, actions, topic)
    uuid = uuid_from_username(username)
    if uuid is None:
        return Decision(IGNORE, "not a device or service username")
    try:
        return _authorize_device(uuid, clientid, actions, topic)
    except DatabaseUnavailable as exc:
        log.error("topic check denied for %s: database unavailable (%s)", username, exc)
        return Decision(DENY, "database unavailable")


def _authorize_device(
    uuid: str, clientid: object, actions: tuple[str, ...], topic: object
) -> Decision:
    """Decide from the cached device state (at most HOOK_CACHE_TTL old), else the database.

    A denial from a cached state older than DENIED_STATE_RECHECK is re-read first.
    """
    hooks = state()
    now = clock()
    device = hooks.devices.get(uuid, now)
    if device is not None:
        decision = _decide_device(device, clientid, actions, topic)
        if decision.allowed or now - device.loaded_at < DENIED_STATE_RECHECK:
            return decision
    device = load_device_state(uuid)
    if device is not None:
        hooks.devices.put(uuid, device, device.loaded_at + current_app.config["HOOK_CACHE_TTL"])
    return _decide_device(device, clientid, actions, topic)


def _decide_device(
    device: DeviceState | None, clientid: object, actions: tuple[str, ...], topic: object
) -> Decision:
    """A device's session state first, then the topic rules."""
    refusal = session_refusal(device, clientid)
    if refusal:
        return Decision(DENY, refusal)
    return _decide_topic(device.identity(), actions, topic)


def _decide_topic(identity: policy.Identity, actions: tuple[str, ...], topic: object) -> Decision:
    """Allow when the policy allows every action on the topic."""
    if all(policy.is_allowed(identity, action, topic) for action in actions):
        return Decision(ALLOW, identity=identity)
    return Decision(DENY, "topic not allowed")


def session_refusal(device: DeviceState | None, clientid: object) -> str | None:
    """Why this device's session may not use topics at all, or None when it may."""
    if device is None:
        return "unknown device"
    if not device.enabled:
        return "device disabled"
    if not device.registered:
        return "device not registered"
    # Revoke, release and unlink clear the client id: that is what cuts a live go-auth session.
    if device.client_id is None or device.client_id != clientid:
        return "not the authenticated session"
    return None


# ---------------------------------------------------------------- database


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
    if device.kind == MASTER:
        registered = device.owner_id is not None
        agents = frozenset(row.uuid for row in rows if row.master_uuid == uuid)
    else:
        registered = device.master_uuid is not None
        agents = frozenset()
    return DeviceState(
        uuid=uuid,
        kind=device.kind,
        token_version=device.token_version,
        enabled=bool(device.enabled),
        registered=registered,
        client_id=device.mqtt_client_id,
        agents=agents,
        loaded_at=clock(),
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


# ---------------------------------------------------------------- request bodies

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def read_body(request: Request) -> dict | None:
    """A hook's fields: a JSON object, or form fields (go-auth `params_mode = form`).

    `{}` for JSON that is not an object (the caller denies), None for a body that is
    neither JSON nor a form (the caller answers 400).
    """
    if request.mimetype in FORM_TYPES:
        return request.form.to_dict()
    # EMQX and go-auth send application/json; parse regardless of a missing content type.
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:  # nesting deeper than the parser's stack: not a hook body
        return None
    if data is None:
        return None
    return data if isinstance(data, dict) else {}


def record(hook: str, result: str) -> None:
    """Count a hook decision (metrics.HOOK_DECISIONS)."""
    metrics.HOOK_DECISIONS.labels(hook, result).inc()
