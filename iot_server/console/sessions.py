"""Console sign-in sessions: a random id in Flask's signed cookie, its hash in the database.

Flask's cookie alone cannot be taken back: a copy stays valid until it expires. So the
cookie carries a random session id, the `console_sessions` table holds its SHA-256, and
signing out deletes the row: a replayed cookie then names a session that no longer exists.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from flask import Flask, current_app, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import bindparam, delete, select

from ..extensions import db
from ..models import ConsoleSession, Owner, utcnow

#: The session key holding the random session id.
SESSION_ID = "sid"


class ConsoleCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over HTTPS, and
    opened only for the console: the cookie's path is the console's, so no other request
    carries one, and the broker hooks do not pay for a signing serializer per request."""

    def open_session(self, app: Flask, request):
        """The session under the console's path; Flask's null session (never saved) for
        every other request."""
        if not request.path.startswith(app.config["SESSION_COOKIE_PATH"]):
            return self.make_null_session(app)
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure behind HTTPS (`request.is_secure` after TRUSTED_PROXIES hops, via
        ProxyFix), so plain-HTTP development still signs in and HTTPS never leaks it."""
        if app.config["SESSION_COOKIE_SECURE"]:
            return True
        return has_request_context() and request.is_secure


#: The owner of a live session, by the hash of its id (built once: each request binds):
#: unexpired, the owner enabled, and no logout-all or password change since it began.
_OWNER = (
    select(Owner)
    .join(ConsoleSession, ConsoleSession.owner_id == Owner.id)
    .where(
        ConsoleSession.id_hash == bindparam("id_hash"),
        ConsoleSession.expires_at > bindparam("now"),
        ConsoleSession.owner_token_version == Owner.token_version,
        Owner.enabled,
    )
)


def _digest(session_id: str) -> str:
    """What the table stores for a session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def create(owner: Owner) -> str:
    """A new server-side session of `owner`; returns its id, which only the cookie keeps.

    Expired rows of every owner are swept here, the one place that adds rows.
    """
    now = utcnow()
    session_id = secrets.token_urlsafe(32)
    db.session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    row = ConsoleSession(
        id_hash=_digest(session_id),
        owner_id=owner.id,
        owner_token_version=owner.token_version,
        created_at=now,
    )
    row.expires_at = now + timedelta(seconds=current_app.config["OWNER_TOKEN_TTL"])
    db.session.add(row)
    db.session.commit()
    return session_id


def begin(owner: Owner) -> None:
    """Sign `owner` in with a fresh session (new id, new CSRF token)."""
    session_id = create(owner)
    # A new cookie, not the anonymous one the sign-in form came from (no fixation).
    session.clear()
    session.permanent = True
    session[SESSION_ID] = session_id


def current_owner() -> Owner | None:
    """The signed-in owner of this request (one indexed query), or None: no session,
    signed out, expired, the account deleted or disabled, or its tokens revoked since."""
    session_id = session.get(SESSION_ID)
    if not isinstance(session_id, str):
        return None
    found = db.session.execute(_OWNER, {"id_hash": _digest(session_id), "now": utcnow()})
    owner = found.scalar_one_or_none()
    if owner is None:
        session.pop(SESSION_ID, None)  # a dead id: forget it rather than look it up again
    return owner


def end() -> None:
    """Sign out: delete the session's row, then empty the cookie."""
    session_id = session.get(SESSION_ID)
    if isinstance(session_id, str):
        gone = ConsoleSession.id_hash == _digest(session_id)
        db.session.execute(delete(ConsoleSession).where(gone))
        db.session.commit()
    session.clear()
