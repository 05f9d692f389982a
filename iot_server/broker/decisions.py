"""The decisions behind every broker hook: who connects, and who touches which topic.

Both adapters (`emqx_hooks`, `mosquitto_hooks`) parse their broker's request, check the
caller (`callers`), call `authenticate()` or `authorize()` here, and shape the answer.
Topic rules live in `policy`, and whether a device may use a token in
`devices.token_refusal()`.

Speed: a broker asks on every CONNECT, and go-auth/amqtt on every publish, subscribe and
delivery. So authentication reads the device, its sessions and its agents in one indexed
query and writes only for a new session (or one due for a refresh); authorization reads a
per-process device-state cache that lives `HOOK_CACHE_TTL` seconds (revocation, and
unlinking, reach every session of the device within that bound);
repeated failed logins are answered from a negative cache for `AUTH_NEGATIVE_TTL` seconds.
A database failure denies, is logged, and is never cached.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from flask import current_app

from .. import devices, metrics, policy, tokens
from ..identifiers import uuid_from_username
from ..models import CLIENT_ID_MAX
from . import caches
from .callers import secret_matches
from .device_state import (
    DatabaseUnavailable,
    DeviceState,
    load_device_state,
    remember_session,
)
from .state_cache import DeviceStateCache

log = logging.getLogger("iot_server.hooks")

#: Why a topic check of a client id that did not authenticate (or was cut) is refused.
NOT_A_SESSION = "not an authenticated session of the device"

ALLOW = "allow"
DENY = "deny"
IGNORE = "ignore"

#: A denial read from the state cache is re-read from the database at most this often,
#: so a reconnect with a new client id (served by another worker) is not refused for the
#: whole TTL, while a revoked session that keeps publishing cannot flood the database.
DENIED_STATE_RECHECK = 0.25
#: The longest client id we remember (`DeviceSession.client_id`).
MAX_CLIENT_ID = CLIENT_ID_MAX


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


# ---------------------------------------------------------------- authentication


def authenticate(username: object, password: object, clientid: object) -> Decision:
    """Decide a CONNECT: a device with its current token, the service account, or ignore."""
    if not isinstance(username, str):
        return Decision(DENY, "malformed username")
    config = current_app.config
    hooks = caches.hook_caches()
    if username == config["MQTT_SERVICE_USERNAME"]:
        if not isinstance(password, str) or not password:
            return _login_denied(username, "missing service password", None, None)
        key = _credentials_key(username, password)
        if hooks.negative.get(key, caches.clock()) is not None:
            hooks.denials.denied(username, "repeated failure (negative cache)", None)
            return Decision(DENY, "repeated failure")
        if secret_matches(password):
            return Decision(ALLOW, identity=policy.SERVICE)
        return _login_denied(username, "wrong service password", None, key)
    uuid = uuid_from_username(username)
    if uuid is None:
        return Decision(IGNORE, "not a device or service username")
    if not isinstance(password, str) or not password:
        return _login_denied(username, "missing token", uuid, None)
    if not is_storable_client_id(clientid):
        # Not negatively cached: the same token with a sane client id must work at once.
        return _login_denied(username, "malformed client id", uuid, None)

    key = _credentials_key(username, password)
    if hooks.negative.get(key, caches.clock()) is not None:
        hooks.denials.denied(username, "repeated failure (negative cache)", uuid)
        return Decision(DENY, "repeated failure")

    try:
        claims = verified_device_claims(password, key, hooks)
    except tokens.InvalidToken as exc:
        return _login_denied(username, f"invalid token ({exc})", uuid, key)
    if claims["sub"] != uuid:
        return _login_denied(username, "token of another device", uuid, key)

    exact = hooks.exact_states()
    try:
        device, ticket = current_state(uuid, exact)
    except DatabaseUnavailable as exc:
        # Not cached: the device may be fine once the database is back.
        log.error("login denied for %s: database unavailable (%s)", username, exc)
        return Decision(DENY, "database unavailable")
    refusal = devices.token_refusal(device, claims)
    if refusal is not None:
        return _login_denied(username, refusal, uuid, key)

    try:
        remembered = remember_session(device, clientid)
    except DatabaseUnavailable as exc:
        log.error("login denied for %s: database unavailable (%s)", username, exc)
        return Decision(DENY, "database unavailable")
    if remembered is None:
        # Revoked (here or on another instance) since we read it: remembering the session
        # would let it use topics the revocation has just taken away.
        return _login_denied(username, devices.REVOKED, uuid, key)
    device = remembered
    if exact is not None:
        exact.put(uuid, device, ticket)
    else:
        hooks.devices.put(uuid, device, device.loaded_at + config["HOOK_CACHE_TTL"])
    return Decision(ALLOW, identity=device.identity, expire_at=int(claims["exp"]))


def current_state(uuid: str, exact: DeviceStateCache | None) -> tuple[DeviceState | None, int]:
    """The device's state, from the exact cache when there is one and it holds it, else
    from the database; with the ticket under which a state read now may be cached."""
    if exact is not None:
        state = exact.get(uuid)
        if state is not None:
            metrics.count_device_state("hit")
            return state, None
        ticket = exact.begin_read()
        state = load_device_state(uuid)
        metrics.count_device_state("miss")
        if state is not None:
            exact.put(uuid, state, ticket)
        return state, ticket
    metrics.count_device_state("uncached")
    return load_device_state(uuid), None


def is_storable_client_id(clientid: object) -> bool:
    """A non-empty UTF-8 string that fits `DeviceSession.client_id`."""
    if not isinstance(clientid, str) or not clientid or len(clientid) > MAX_CLIENT_ID:
        return False
    try:
        clientid.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in clientid


def verified_device_claims(token: str, key: bytes, hooks: caches.HookCaches) -> dict:
    """`tokens.verify(token, DEVICE)`, remembered per (username, token) until the token
    expires: a device reconnecting with the same token skips the JWT decoding."""
    now = caches.clock()
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
    hooks = caches.hook_caches()
    if key is not None:
        ttl = current_app.config["AUTH_NEGATIVE_TTL"]
        if ttl > 0:
            hooks.negative.put(key, True, caches.clock() + ttl)
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
    """Decide from the exact cache when it is trusted; else from a cached state at most
    HOOK_CACHE_TTL old, or the database.

    Without the exact cache, a denial from a cached state older than DENIED_STATE_RECHECK
    is re-read first (a new session recorded by another worker).
    """
    hooks = caches.hook_caches()
    exact = hooks.exact_states()
    if exact is not None:
        return _decide_device(current_state(uuid, exact)[0], clientid, actions, topic)
    now = caches.clock()
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
    return _decide_topic(device.identity, actions, topic)


def _decide_topic(identity: policy.Identity, actions: tuple[str, ...], topic: object) -> Decision:
    """Allow when the policy allows every action on the topic."""
    if all(policy.is_allowed(identity, action, topic) for action in actions):
        return Decision(ALLOW, identity=identity)
    return Decision(DENY, "topic not allowed")


def session_refusal(device: DeviceState | None, clientid: object) -> str | None:
    """Why this device's session may not use topics at all, or None when it may."""
    refusal = devices.token_refusal(device)
    if refusal is not None:
        return refusal
    # Revoke, disable, release and unlink bump the version and forget the sessions: that
    # is what cuts every live go-auth session of the device. Other sessions are untouched.
    if not device.has_session(clientid):
        return NOT_A_SESSION
    return None
