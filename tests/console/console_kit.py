"""Helpers of the owner console's tests: a console driver over the Flask test client
(flaskr's AuthActions, grown up), and Debian's chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from conftest import service_unavailable

from iot_server.console import sessions
from iot_server.extensions import db
from iot_server.models import Device, Owner

CHROMIUM = "/usr/bin/chromium"
#: Headless, sandbox-free (CI runs as root), and nothing that reaches out to the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Console:
    """Drives the console through the Flask test client, as a browser without JS would."""

    def __init__(self, app, client):
        self.app = app
        self.client = client

    def csrf_token(self, page: str = "/console") -> str:
        """The CSRF token of this client's session, read from a form on `page` (by default
        the devices page, or the sign-in page it sends the anonymous to)."""
        response = self.client.get(page, follow_redirects=True)
        found = _TOKEN.search(response.get_data(as_text=True))
        assert found, f"no CSRF token on {page} ({response.status_code})"
        return found.group(1)

    def post(self, path: str, data: dict | None = None, token: bool = True, **kwargs):
        """POST a form, with this session's CSRF token unless `token` is False."""
        form = dict(data or {})
        if token:
            form["csrf_token"] = self.csrf_token()
        return self.client.post(path, data=form, **kwargs)

    def sign_in_as(self, username: str = "alice") -> int:
        """Sign in without the password check (no argon2 per test): a real server-side
        session, its id in the cookie. Creates the owner when missing; returns its id."""
        with self.app.app_context():
            owner = db.session.execute(db.select(Owner).filter_by(username=username)).scalar()
            if owner is None:
                owner = Owner(username=username, password_hash="x")
                db.session.add(owner)
                db.session.commit()
            session_id = sessions.create(owner)
            owner_id = owner.id
        with self.client.session_transaction("/console") as cookie:
            cookie.clear()
            cookie.permanent = True
            cookie[sessions.SESSION_ID] = session_id
        return owner_id

    def page(self, path: str) -> str:
        """The text of a page that must answer 200."""
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        return response.get_data(as_text=True)

    def flashes(self, path: str = "/console") -> list[str]:
        """The flashed messages the next page shows."""
        text = self.page(path)
        return [m.strip() for m in re.findall(r'<p class="flash[^"]*"[^>]*>([^<]*)</p>', text)]

    def device(self, uuid: str) -> Device | None:
        """A detached snapshot of a device row (None when there is none)."""
        with self.app.app_context():
            device = db.session.get(Device, uuid)
            if device is not None:
                db.session.expunge(device)
            return device


# ---------------------------------------------------------------- a real browser


@contextlib.contextmanager
def launched_chromium():
    """Debian's chromium through Playwright (Playwright's own browser download cannot work
    here: it is never installed); skipped locally, failed in CI, when it is missing."""
    if not Path(CHROMIUM).exists():
        service_unavailable(f"{CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Pages:
    """Opens browser contexts (each its own cookies) on the live server, and records
    every Content-Security-Policy violation their pages report."""

    def __init__(self, browser, base_url: str):
        self.browser = browser
        self.base_url = base_url
        self.contexts = []
        self.csp_violations: list[str] = []

    def open(self, width: int = 1280, height: int = 800, javascript: bool = True):
        """A new page in a new context (a separate browser profile)."""
        context = self.browser.new_context(
            base_url=self.base_url,
            viewport={"width": width, "height": height},
            java_script_enabled=javascript,
        )
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._record)
        return page

    def _record(self, message) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.csp_violations.append(message.text)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def sign_in(page, username: str = "alice", password: str = PASSWORD) -> None:
    """Sign in through the form, as a person would."""
    page.goto("/console/sign-in")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Devices", exact=True).wait_for()
