"""Owner accounts: validation, creation and password checks (argon2id via argon2-cffi)."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .errors import ApiError
from .extensions import db
from .identifiers import USERNAME_FORM, parse_username
from .models import Owner

PASSWORD_MIN, PASSWORD_MAX = 12, 256
_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """A hash to check unknown usernames against, so they cost as much as known ones."""
    return _hasher.hash("not-a-real-password-only-for-timing")


def normalize_username(value: object) -> str:
    """The lowercase username; 400 unless it is well-formed (`identifiers.USERNAME_FORM`)."""
    username = parse_username(value)
    if username is None:
        raise ApiError(400, f"username must be {USERNAME_FORM}")
    return username


def validate_password(value: object) -> str:
    """The password; 400 unless it is a string of 12-256 characters."""
    if not isinstance(value, str) or not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise ApiError(400, f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters")
    return value


def token_holder(claims: dict) -> Owner | None:
    """The owner a verified owner token stands for, if the account still exists."""
    try:
        owner_id = int(claims["sub"])
    except ValueError:
        return None
    return db.session.get(Owner, owner_id)


def by_username(username: str) -> Owner | None:
    """The owner with this (normalised) username, if any."""
    return db.session.execute(select(Owner).filter_by(username=username)).scalar_one_or_none()


def create(username: object, password: object) -> Owner:
    """A new owner account; 409 when the username is taken."""
    name = normalize_username(username)
    secret = validate_password(password)
    owner = Owner(username=name, password_hash=_hasher.hash(secret))
    db.session.add(owner)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ApiError(409, "username taken") from None
    return owner


def authenticate(username: object, password: object) -> Owner | None:
    """The owner when the credentials match, else None (same cost either way)."""
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    owner = by_username(username.lower())
    try:
        _hasher.verify(owner.password_hash if owner else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    return owner
