"""The owner console: server-rendered pages at /console (SPEC.md, "Owner console").

`init_app()` sets up what the pages rely on: Flask's signed session cookie (HttpOnly,
SameSite=Lax, Path=/console, Secure whenever the request came over HTTPS) and Flask-WTF's
CSRF tokens, which only the console checks (`pages.guard`). The JSON APIs take bearer tokens
and the hooks a secret, which a browser never sends on its own, so they need no CSRF token.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from .sessions import ConsoleCookies

csrf = CSRFProtect()


def init_app(app: Flask) -> None:
    """The console's cookie and CSRF settings, and its session interface."""
    app.config.update(
        SESSION_COOKIE_NAME="iot_console",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # The cookie and its server-side row both end one owner-token lifetime after
        # sign-in; the cookie is only sent again when it changes (not on every poll).
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=app.config["OWNER_TOKEN_TTL"]),
        SESSION_REFRESH_EACH_REQUEST=False,
        WTF_CSRF_CHECK_DEFAULT=False,
        # A form token lives as long as the session it belongs to, not one hour.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.session_interface = ConsoleCookies()
    csrf.init_app(app)
