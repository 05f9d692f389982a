"""Owner accounts: validation, creation, password checks (argon2id via argon2-cffi) and
credentials (token version, password change, disable). No HTTP in here: the auth blueprint,
the admin CLI and the console call these functions.

Password hashing is the expensive step of a login (about 50 ms of one core here): at most
`HASHING_SLOTS` run at once per process, and a login that finds no free slot gets
`Busy` (the API answers 429) instead of queueing behind a flood.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from limits import parse as parse_limit
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .errors import ApiError
from .extensions import db, limiter
from .identifiers import USERNAME_FORM, parse_username
from .models import Owner

log = logging.getLogger("iot_server.owners")

PASSWORD_MIN, PASSWORD_MAX = 12, 256
#: argon2id at OWASP's first recommendation (Password Storage Cheat Sheet: m=19 MiB, t=2,
#: p=1), about 50 ms on one core of the development machine. Hashes made with other
#: parameters (the first release used m=64 MiB, t=3, p=4: 0.3 s and 64 MiB each) are
#: rehashed at the owner's next successful login.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
#: Password hashes computed at once per process: about the core count, so a login flood
#: takes at most the CPU a process has, and its memory stays bounded (19 MiB each).
HASHING_SLOTS = os.cpu_count() or 1
_hashing = threading.BoundedSemaphore(HASHING_SLOTS)


class Busy(ApiError):
    """Every password-hashing slot of this process is taken: try again shortly (429)."""

    def __init__(self) -> None:
        super().__init__(429, "busy checking passwords, try again", headers={"Retry-After": "1"})


@contextmanager
def hashing_slot() -> Iterator[None]:
    """Hold one of the process's hashing slots; `Busy` when none frees up quickly."""
    # No waiting: a queue of logins in front of the slots would hold the server's threads.
    if not _hashing.acquire(blocking=False):
        raise Busy()
    try:
        yield
    finally:
        _hashing.release()


@cache
def _dummy_hash() -> str:
    """A hash to check unknown usernames against, so they cost as much as known ones."""
    return _hasher.hash("not-a-real-password-only-for-timing")


@cache
def common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords (zxcvbn's list, from leaked password sets), lowercase.

    Loaded on first use: a login never needs it, only choosing a password does.
    """
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(word.lower() for word in FREQUENCY_LISTS["passwords"])


def normalize_username(value: object) -> str:
    """The lowercase username; 400 unless it is well-formed (`identifiers.USERNAME_FORM`)."""
    username = parse_username(value)
    if username is None:
        raise ApiError(400, f"username must be {USERNAME_FORM}")
    return username


def password_problem(value: object) -> str | None:
    """Why `value` may not be a password (SPEC.md, "Owner API"), or None."""
    if not isinstance(value, str) or not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        return f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"
    if len(set(value)) == 1:
        return "password must not be one repeated character"
    if value.lower() in common_passwords():
        return "password is among the most common passwords"
    return None


def validate_password(value: object) -> str:
    """The password; 400 unless it is 12-256 characters, not one repeated character, and
    not among the most common passwords."""
    problem = password_problem(value)
    if problem is not None:
        raise ApiError(400, problem)
    return value


def token_holder(claims: dict) -> Owner | None:
    """The owner a verified owner token stands for, while the token may be used: the account
    exists, is enabled, and the token is of its current version."""
    try:
        owner_id = int(claims["sub"])
    except ValueError:
        return None
    owner = db.session.get(Owner, owner_id)
    if owner is None or not owner.enabled or owner.token_version != claims.get("ver"):
        return None
    return owner


def by_username(username: str) -> Owner | None:
    """The owner with this (normalised) username, if any."""
    return db.session.execute(select(Owner).filter_by(username=username)).scalar_one_or_none()


def create(username: object, password: object) -> Owner:
    """A new owner account; 409 when the username is taken."""
    name = normalize_username(username)
    secret = validate_password(password)
    with hashing_slot():
        password_hash = _hasher.hash(secret)
    owner = Owner(username=name, password_hash=password_hash)
    db.session.add(owner)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ApiError(409, "username taken") from None
    return owner


def login_username(value: object) -> str | None:
    """The stored form of a username typed at login, or None when it cannot be one.

    ASCII is checked before lowercasing: `str.lower()` maps the Kelvin sign to "k".
    """
    if not isinstance(value, str) or not value.isascii():
        return None
    return value.lower()


def authenticate(username: object, password: object) -> Owner | None:
    """The owner when the credentials match and the account is enabled, else None (the same
    cost either way). Rehashes a password stored with older parameters. `Busy` (before any
    database query) when the process is already hashing as much as it may."""
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    with hashing_slot():
        name = login_username(username)
        owner = by_username(name) if name is not None else None
        if not _verify(owner, password) or not owner.enabled:
            return None
        if _hasher.check_needs_rehash(owner.password_hash):
            owner.password_hash = _hasher.hash(password)
            db.session.commit()
    return owner


def login(username: object, password: object) -> Owner:
    """The owner for a login: 403 for wrong credentials (the same whether or not the user
    exists), 429 once the username has failed `RATELIMIT_LOGIN_FAILURES` times (guessing one
    account from many addresses), 429 when the process is busy hashing."""
    name = login_username(username) or "-"
    limit = parse_limit(current_app.config["RATELIMIT_LOGIN_FAILURES"])
    if not _limit_allows(limit, name):
        raise ApiError(429, "too many failed logins for this username", headers=_retry(limit))
    owner = authenticate(username, password)
    if owner is None:
        _count_failure(limit, name)
        raise ApiError(403, "wrong username or password")
    return owner


def _limit_allows(limit, username: str) -> bool:
    """True while the username is under its failed-login limit (and when the limiter's
    storage is unreachable: its failures never fail a request)."""
    try:
        return limiter.limiter.test(limit, "login-failures", username)
    except Exception as exc:  # noqa: BLE001 - any storage failure: serve, and say so
        log.warning("failed-login limit unavailable: %s", type(exc).__name__)
        return True


def _count_failure(limit, username: str) -> None:
    """Count a failed login against the username."""
    try:
        limiter.limiter.hit(limit, "login-failures", username)
    except Exception as exc:  # noqa: BLE001
        log.warning("failed-login limit unavailable: %s", type(exc).__name__)


def _retry(limit) -> dict[str, str]:
    """`Retry-After` for a username over its limit: the limit's whole window."""
    return {"Retry-After": str(limit.get_expiry())}


def _verify(owner: Owner | None, password: str) -> bool:
    """Verify `password` against the owner's hash (a dummy one for no owner, at the same
    cost); the caller holds a hashing slot."""
    try:
        _hasher.verify(owner.password_hash if owner else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return owner is not None


def change_password(owner: Owner, password: object, new_password: object) -> None:
    """Set a new password when `password` is the current one (403 otherwise); every earlier
    token of the owner ends."""
    if not isinstance(password, str):
        raise ApiError(403, "wrong password")
    with hashing_slot():
        matches = _verify(owner, password)
    if not matches:
        raise ApiError(403, "wrong password")
    set_password(owner, new_password)


def set_password(owner: Owner, password: object) -> None:
    """Set the owner's password (400 for a weak one) and end every earlier token."""
    secret = validate_password(password)
    with hashing_slot():
        owner.password_hash = _hasher.hash(secret)
    owner.token_version += 1
    db.session.commit()


def revoke_tokens(owner: Owner) -> None:
    """End every token of the owner issued so far (logout everywhere)."""
    owner.token_version += 1
    db.session.commit()


def set_enabled(owner: Owner, enabled: bool) -> None:
    """Disable (no login, every token ended) or enable an account."""
    owner.enabled = enabled
    if not enabled:
        owner.token_version += 1
    db.session.commit()
