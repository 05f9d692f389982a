"""The owner console through the Flask test client: every route, accounts and sessions,
CSRF, cookie flags, the Content-Security-Policy, other owners' devices, presence, speed
in statements, and hostile input. (A real browser drives it in test_browser.py.)"""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import MASTER_SECRET, MQTT_SECRET, new_uuid
from console_kit import PASSWORD, Console
from sqlalchemy import event, select, text

from iot_server import create_app
from iot_server import devices as devices_service
from iot_server.console import pages
from iot_server.extensions import db, limiter
from iot_server.models import ConsoleSession, Device, Owner, utcnow

TEMPLATES = Path(pages.__file__).parent / "templates"
STATIC = Path(pages.__file__).parent / "static"


@pytest.fixture
def console(app, client) -> Console:
    """The console, through the test client."""
    return Console(app, client)


def statements(app, action) -> list[str]:
    """Every SQL statement `action()` sends to the database."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def owner_devices(devices, owner: str, masters: int, agents: int) -> list[str]:
    """`masters` claimed masters of `owner`, each with `agents` agents; all uuids."""
    made = []
    for _ in range(masters):
        master = devices.master(owner=owner)
        made += [master, *(devices.agent(master) for _ in range(agents))]
    return made


# ---------------------------------------------------------------- the front door


def test_front_page_redirects_to_the_console(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/console"


def test_pages_send_the_anonymous_to_sign_in(client):
    for path in ("/console", f"/console/devices/{new_uuid()}"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/console/sign-in?next=")


def test_sign_in_and_create_account_pages_have_the_spec_names(client):
    sign_in = client.get("/console/sign-in").get_data(as_text=True)
    for field in ("username", "password"):
        assert f'<label for="{field}">{field.capitalize()}</label>' in sign_in
    assert ">Sign in</button>" in sign_in
    create = client.get("/console/create-account").get_data(as_text=True)
    assert '<label for="username">Username</label>' in create
    assert ">Create account</button>" in create


def test_unknown_console_paths_are_an_html_404(client):
    response = client.get("/console/no/such/page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "There is nothing here." in response.get_data(as_text=True)


# ---------------------------------------------------------------- accounts


def test_create_account_signs_in(console, client, app):
    response = console.post("/console/create-account", {"username": "Alice", "password": PASSWORD})
    assert response.status_code == 303
    assert response.headers["Location"] == "/console"
    assert any("Welcome, alice" in m for m in console.flashes())
    with app.app_context():
        owner = db.session.execute(select(Owner)).scalar_one()
        assert owner.username == "alice"
        assert db.session.execute(select(ConsoleSession)).scalar_one().owner_id == owner.id


@pytest.mark.parametrize(
    ("username", "password", "status", "message"),
    [
        ("al", PASSWORD, 400, "Username must be 3-64 characters"),
        ("alice!", PASSWORD, 400, "Username must be 3-64 characters"),
        ("alice", "short", 400, "Password must be 12-256 characters"),
    ],
)
def test_create_account_refuses_bad_input(console, app, username, password, status, message):
    response = console.post("/console/create-account", {"username": username, "password": password})
    assert response.status_code == status
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.execute(select(Owner)).first() is None


def test_create_account_refuses_a_taken_username(console, devices):
    devices.owner("alice", PASSWORD)
    response = console.post("/console/create-account", {"username": "ALICE", "password": PASSWORD})
    assert response.status_code == 409
    assert "Username taken." in response.get_data(as_text=True)


def test_sign_in_with_the_right_password(console, devices):
    devices.owner("alice", PASSWORD)
    response = console.post(
        "/console/sign-in",
        {"username": "alice", "password": PASSWORD, "next": "/console/devices/x"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/devices/x"
    assert "Devices" in console.page("/console")


def test_wrong_password_and_unknown_user_get_the_same_answer(console, devices):
    devices.owner("alice", PASSWORD)
    answers = []
    for username, password in (("alice", "not the password!"), ("nobody", PASSWORD)):
        response = console.post("/console/sign-in", {"username": username, "password": password})
        body = response.get_data(as_text=True)
        body = re.sub(r'name="csrf_token" value="[^"]+"', "", body)
        body = body.replace(f'value="{username}"', 'value="…"')
        answers.append((response.status_code, body))
    assert answers[0] == answers[1]
    assert answers[0][0] == 403
    assert "Wrong username or password." in answers[0][1]
    assert console.client.get("/console").status_code == 302  # not signed in


def test_a_signed_in_owner_skips_the_forms(console):
    console.sign_in_as("alice")
    assert console.client.get("/console/sign-in").headers["Location"] == "/console"
    assert console.client.get("/console/create-account").headers["Location"] == "/console"


def test_sign_in_starts_a_new_session(console, devices, client):
    """No fixation: the anonymous cookie's CSRF token does not survive signing in."""
    devices.owner("alice", PASSWORD)
    before = console.csrf_token()
    console.post("/console/sign-in", {"username": "alice", "password": PASSWORD})
    assert console.csrf_token("/console") != before


def test_sign_out_ends_the_session_on_the_server(console, client, app):
    console.sign_in_as("alice")
    uuid = new_uuid()
    token = console.csrf_token("/console")
    stolen = client.get_cookie("iot_console", path="/console").value
    response = console.post("/console/sign-out")
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in"
    with app.app_context():
        assert db.session.execute(select(ConsoleSession)).first() is None
    # The old cookie, replayed with its valid CSRF token, is nobody's session any more.
    client.set_cookie("iot_console", stolen, path="/console")
    assert client.get("/console").status_code == 302
    response = client.post("/console/claim", data={"uuid": uuid, "csrf_token": token})
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in"
    assert console.device(uuid) is None


@pytest.mark.parametrize("how", ["password", "logout-all", "revoke", "disable"])
def test_ending_the_owners_tokens_ends_their_console_sessions(console, client, app, runner, how):
    """A password change, logout-all (API), `flask users revoke` and `disable` end every
    console session of the owner too, not only the API tokens."""
    from iot_server import owners

    owner_id = console.sign_in_as("alice")
    assert client.get("/console").status_code == 200
    with app.app_context():
        owner = db.session.get(Owner, owner_id)
        if how == "password":
            owners.set_password(owner, "a brand new passphrase 42")
        elif how == "logout-all":
            owners.revoke_tokens(owner)
        elif how == "revoke":
            assert runner.invoke(args=["users", "revoke", "alice"]).exit_code == 0
        else:
            assert runner.invoke(args=["users", "disable", "alice"]).exit_code == 0
    response = client.get("/console")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/console/sign-in")


def test_sign_in_shares_the_per_username_failure_limit(console, app, devices):
    """The API's login rules: after RATELIMIT_LOGIN_FAILURES failures for one username,
    even from other addresses, sign-in answers 429 with Retry-After, right password or not."""
    devices.owner("alice", PASSWORD)
    app.config["RATELIMIT_LOGIN_FAILURES"] = "3 per minute"
    for n in range(3):
        response = console.post(
            "/console/sign-in",
            {"username": "alice", "password": "wrong password!"},
            environ_base={"REMOTE_ADDR": f"10.77.0.{n + 1}"},
        )
        assert response.status_code == 403
    response = console.post(
        "/console/sign-in",
        {"username": "alice", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.77.1.1"},
    )
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "text/html" in response.headers["Content-Type"]


def test_an_expired_session_is_signed_out(console, app):
    console.sign_in_as("alice")
    with app.app_context():
        row = db.session.execute(select(ConsoleSession)).scalar_one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert console.client.get("/console").status_code == 302


def test_signing_in_sweeps_expired_sessions(console, app):
    console.sign_in_as("old")
    with app.app_context():
        db.session.execute(db.update(ConsoleSession).values(expires_at=utcnow()))
        db.session.commit()
    console.sign_in_as("new")
    with app.app_context():
        owners = db.session.execute(select(ConsoleSession.owner_id)).scalars().all()
        new_owner = db.session.execute(select(Owner).filter_by(username="new")).scalar_one()
    assert owners == [new_owner.id]


def test_sessions_last_one_owner_token_lifetime(console, app):
    console.sign_in_as("alice")
    with app.app_context():
        row = db.session.execute(select(ConsoleSession)).scalar_one()
        lifetime = row.expires_at - row.created_at
    assert lifetime == timedelta(seconds=app.config["OWNER_TOKEN_TTL"])


def test_the_table_holds_no_usable_session_id(console, client, app):
    console.sign_in_as("alice")
    with client.session_transaction("/console") as cookie:
        session_id = cookie["sid"]
    with app.app_context():
        stored = db.session.execute(select(ConsoleSession.id_hash)).scalar_one()
    assert session_id not in stored
    assert len(stored) == 64


# ---------------------------------------------------------------- cookies and headers


def session_cookie_header(response) -> str:
    [header] = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("iot_console=")]
    return header


def test_session_cookie_flags_over_http(console, devices):
    devices.owner("alice", PASSWORD)
    response = console.post("/console/sign-in", {"username": "alice", "password": PASSWORD})
    header = session_cookie_header(response)
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header
    assert "Path=/console" in header
    assert "Secure" not in header


def test_session_cookie_is_secure_over_https(app):
    client = app.test_client()
    response = client.get("/console/sign-in", base_url="https://console.example")
    assert "Secure" in session_cookie_header(response)


@pytest.mark.parametrize(("hops", "secure"), [(0, False), (1, True)])
def test_secure_follows_the_proxy_only_through_trusted_hops(app_config, hops, secure):
    app = create_app({**app_config, "TRUSTED_PROXIES": hops})
    response = app.test_client().get(
        "/console/sign-in", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.7"}
    )
    assert ("Secure" in session_cookie_header(response)) is secure
    with app.app_context():
        db.engine.dispose()


def test_the_secret_key_is_derived_and_signs_no_token(app):
    key = app.config["SECRET_KEY"]
    assert key and key != app.config["JWT_SECRET"]
    assert key == create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"}).config["SECRET_KEY"]
    other = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "JWT_SECRET": "x" * 40})
    assert other.config["SECRET_KEY"] != key


def test_the_console_without_a_secret_says_so(app_config):
    app = create_app({**app_config, "JWT_SECRET": None})
    response = app.test_client().get("/console/sign-in")
    assert response.status_code == 503
    assert "JWT_SECRET" in response.get_data(as_text=True)


def every_console_answer(console, devices) -> dict[str, object]:
    """One answer of each kind the console gives: pages, errors, JSON, static files."""
    master = devices.master(owner="alice")
    console.sign_in_as("alice")
    client = console.client
    return {
        "devices page": client.get("/console"),
        "device page": client.get(f"/console/devices/{master}"),
        "confirmation": client.get(f"/console/devices/{master}/revoke"),
        "presence": client.get("/console/presence"),
        "404 page": client.get(f"/console/devices/{new_uuid()}"),
        "csrf refusal": client.post("/console/claim", data={"uuid": new_uuid()}),
        "stylesheet": client.get("/console/static/console.css"),
        "script": client.get("/console/static/console.js"),
        "sign-in page": console.app.test_client().get("/console/sign-in?next=/console"),
    }


def test_every_console_answer_carries_the_csp(console, devices):
    for name, response in every_console_answer(console, devices).items():
        csp = response.headers.get("Content-Security-Policy", "")
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'", name
        assert directives["script-src"] == "'self'", name
        assert directives["style-src"] == "'self'", name
        assert directives["frame-ancestors"] == "'none'", name
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, name
        assert response.headers["X-Content-Type-Options"] == "nosniff", name


def test_pages_are_not_cached_but_assets_may_be(console, devices):
    answers = every_console_answer(console, devices)
    for name in ("devices page", "device page", "presence", "sign-in page"):
        assert answers[name].headers["Cache-Control"] == "no-store", name
    assert "no-store" not in answers["stylesheet"].headers.get("Cache-Control", "")


class InlineFinder(HTMLParser):
    """Collects what the CSP would block: inline scripts, style elements and attributes,
    event-handler attributes, and assets from another host."""

    def __init__(self):
        super().__init__()
        self.problems: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "script":
            self.scripts += 1
            if not names.get("src") or "defer" not in names:
                self.problems.append("script without src and defer")
        if tag == "style":
            self.problems.append("<style>")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if name in ("src", "href", "action") and value and "//" in value:
                self.problems.append(f"{tag} {name}={value}")


def test_pages_have_no_inline_script_or_style(console, devices):
    for name, response in every_console_answer(console, devices).items():
        if response.mimetype != "text/html":
            continue
        finder = InlineFinder()
        finder.feed(response.get_data(as_text=True))
        assert finder.problems == [], name
        assert finder.scripts == 1, name  # the one deferred script
    for template in TEMPLATES.rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"\sstyle=|<style|\son[a-z]+=|<script(?![^>]*\ssrc=)", text), template


def test_one_stylesheet_and_one_script(console):
    assert sorted(p.name for p in STATIC.iterdir()) == ["console.css", "console.js", "icon.svg"]
    base = (TEMPLATES / "console" / "base.html").read_text()
    assert base.count('rel="stylesheet"') == 1
    assert base.count("<script") == 1
    assert "defer" in base


# ---------------------------------------------------------------- CSRF


def console_post_routes(app) -> list[str]:
    """Every console rule that accepts POST, with a placeholder uuid."""
    return sorted(
        rule.rule.replace("<uuid>", "{uuid}").replace("<path:rest>", "anything")
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("console.") and "POST" in rule.methods
    )


def snapshot(app) -> list[tuple]:
    """Every device, owner and session, to prove nothing changed."""
    with app.app_context():
        rows = [
            tuple(device.__dict__.get(c.key) for c in Device.__table__.columns)
            for device in db.session.execute(select(Device)).scalars()
        ]
        rows += [(o.id, o.username) for o in db.session.execute(select(Owner)).scalars()]
        rows += [
            (s.id_hash, s.owner_id) for s in db.session.execute(select(ConsoleSession)).scalars()
        ]
    return sorted(rows, key=repr)


@pytest.mark.parametrize("token", ["missing", "empty", "forged", "another session's"])
def test_every_post_without_this_sessions_token_is_400_and_changes_nothing(
    app, console, devices, token
):
    master = devices.master(owner="alice")
    agent = devices.agent(master)
    other = Console(app, app.test_client())
    other_token = other.csrf_token()
    console.sign_in_as("alice")
    routes = console_post_routes(app)
    assert len(routes) >= 10
    before = snapshot(app)
    for route in routes:
        path = route.format(uuid=agent if route.endswith("unlink") else master)
        form = {
            "uuid": new_uuid(),
            "agent_uuid": new_uuid(),
            "name": "renamed",
            "username": "mallory",
            "password": PASSWORD,
        }
        if token != "missing":
            form["csrf_token"] = {"empty": "", "forged": "x" * 40}.get(token, other_token)
        response = console.client.post(path, data=form)
        assert response.status_code == 400, (route, response.status_code)
        assert "Nothing was changed." in response.get_data(as_text=True)
    assert snapshot(app) == before
    assert console.client.get("/console").status_code == 200  # still signed in


def test_the_csrf_token_header_is_accepted_too(console, devices):
    console.sign_in_as("alice")
    uuid = new_uuid()
    token = console.csrf_token("/console")
    response = console.client.post(
        "/console/claim", data={"uuid": uuid}, headers={"X-CSRFToken": token}
    )
    assert response.status_code == 303
    assert console.device(uuid).owner_id is not None


# ---------------------------------------------------------------- rate limits


@pytest.fixture
def tight_auth(app_config):
    """The SPEC's /auth/* limit, small enough to reach."""
    return {**app_config, "RATELIMIT_AUTH": "3 per 30 seconds"}


@pytest.mark.parametrize("first", ["api", "console"])
def test_sign_in_shares_the_auth_bucket(tight_auth, first):
    app = create_app(tight_auth)
    with app.app_context():
        limiter.reset()
    client = app.test_client()
    console = Console(app, client)
    token = console.csrf_token()
    wrong = {"username": "nobody", "password": "wrong password!"}

    def api():
        return client.post("/auth/users/login", json=wrong).status_code

    def sign_in():
        return client.post("/console/sign-in", data={**wrong, "csrf_token": token}).status_code

    spend, then = (api, sign_in) if first == "api" else (sign_in, api)
    assert [spend() for _ in range(3)] == [403, 403, 403]
    assert then() == 429
    # The console's refusal is a page, and the form page itself is not limited.
    response = client.post("/console/sign-in", data={**wrong, "csrf_token": token})
    assert response.status_code == 429
    assert "Too many attempts" in response.get_data(as_text=True)
    assert "Retry-After" in response.headers
    assert client.get("/console/sign-in").status_code == 200
    with app.app_context():
        db.engine.dispose()


def test_creating_accounts_spends_the_auth_bucket(tight_auth):
    app = create_app(tight_auth)
    with app.app_context():
        limiter.reset()
    console = Console(app, app.test_client())
    statuses = [
        console.post("/console/create-account", {"username": "a", "password": "b"}).status_code
        for _ in range(4)
    ]
    assert statuses == [400, 400, 400, 429]
    with app.app_context():
        db.engine.dispose()


# ---------------------------------------------------------------- the devices page


def test_devices_page_nests_agents_under_their_masters(console, devices, app):
    master = devices.master(owner="alice")
    agents = [devices.agent(master) for _ in range(2)]
    lonely = devices.master(owner="alice")
    devices.master(owner="bob")  # someone else's: never shown
    with app.app_context():
        db.session.get(Device, agents[0]).name = "Kitchen sensor"
        db.session.get(Device, master).last_seen_at = utcnow() - timedelta(seconds=12)
        db.session.commit()
    console.sign_in_as("alice")
    text = console.page("/console")
    assert text.count('class="device-row"') == 4
    first, second = text.split(f'data-device="{lonely}"')
    for agent in agents:
        assert f'data-device="{agent}"' in first
    assert f"Agents of {master}" in first
    assert "Kitchen sensor" in text
    assert "12 s ago" in text
    assert "1</span> of 4 online" in text
    assert re.search(r'is-online" data-status><span class="dot" aria-hidden="true"></span>'
                     r"<span data-status-text>Online<", text)  # fmt: skip


def test_devices_page_has_the_spec_names(console, devices):
    devices.agent(devices.master(owner="alice"))
    console.sign_in_as("alice")
    text = console.page("/console")
    for label in ("Device UUID", "Agent UUID", "Name"):
        assert re.search(rf"<label for=\"[^\"]+\">{label}</label>", text), label
    for button in ("Claim", "Link agent", "Rename", "Revoke", "Release", "Unlink", "Sign out"):
        assert f">{button}</button>" in text, button


def test_the_exact_time_is_on_hover(console, devices, app):
    master = devices.master(owner="alice")
    with app.app_context():
        db.session.get(Device, master).last_seen_at = utcnow().replace(
            year=2026, month=1, day=2, hour=3, minute=4, second=5, microsecond=0
        )
        db.session.commit()
    console.sign_in_as("alice")
    text = console.page("/console")
    assert 'datetime="2026-01-02T03:04:05Z" title="2026-01-02 03:04:05 UTC"' in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "never"), (0, "0 s ago"), (59, "59 s ago"), (60, "1 min ago"), (7200, "2 h ago"),
     (3 * 86400, "3 d ago")],
)  # fmt: skip
def test_ago(seconds, text):
    now = utcnow()
    moment = None if seconds is None else now - timedelta(seconds=seconds)
    assert pages.ago(moment, now) == text


def test_an_empty_console_says_what_to_do(console):
    console.sign_in_as("alice")
    text = console.page("/console")
    assert "No devices yet" in text
    assert "0</span> of 0 online" in text


def test_devices_page_costs_the_same_statements_for_5_or_60_devices(console, devices, app):
    console.sign_in_as("alice")
    counts = []
    for masters, agents in ((1, 4), (12, 4)):
        owner_devices(devices, "alice", masters, agents)
        counts.append(len(statements(app, lambda: console.page("/console"))))
    assert counts == [2, 2]  # the session, the devices: no query per device


# ---------------------------------------------------------------- presence


def test_presence_answers_every_device_in_one_query(console, devices, app):
    console.sign_in_as("alice")
    counts = []
    for masters, agents in ((1, 1), (10, 5)):
        made = owner_devices(devices, "alice", masters, agents)
        sent = statements(app, lambda: console.client.get("/console/presence"))
        counts.append(len([s for s in sent if "devices" in s]))
        assert len(sent) == 2, sent  # the session, the presence
    assert counts == [1, 1]
    with app.app_context():
        seen = utcnow() - timedelta(seconds=5)
        db.session.get(Device, made[-1]).last_seen_at = seen
        db.session.commit()
    body = console.client.get("/console/presence").get_json()
    assert body["c"] == "OK"
    assert len(body["devices"]) == 2 + 10 * 6
    assert body["devices"][made[-1]]["online"] is True
    assert body["devices"][made[-1]]["last_seen_at"] == seen.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body["devices"][made[0]] == {"online": False, "last_seen_at": None}


def test_presence_is_only_the_owners_and_needs_a_session(console, devices, client):
    mine = devices.master(owner="alice")
    devices.master(owner="bob")
    assert client.get("/console/presence").status_code == 403
    console.sign_in_as("alice")
    assert list(client.get("/console/presence").get_json()["devices"]) == [mine]


def test_presence_query_uses_the_indexes(app):
    """On PostgreSQL, with sequential scans priced out, the plan reaches the devices
    through the owner_id and master_uuid indexes (the planner picks a table scan on a
    table this small by itself)."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("the plan is PostgreSQL's")
    from sqlalchemy.dialects import postgresql

    statement = devices_service.presence_query(42).compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
    )
    with app.app_context():
        db.session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(row[0] for row in db.session.execute(text(f"EXPLAIN {statement}")))
        db.session.rollback()
    assert "ix_devices_owner_id" in plan, plan
    assert "ix_devices_master_uuid" in plan, plan


# ---------------------------------------------------------------- actions


def test_claim_a_new_master(console):
    console.sign_in_as("alice")
    uuid = new_uuid()
    response = console.post("/console/claim", {"uuid": "  " + uuid.upper() + " "})
    assert response.headers["Location"] == "/console"
    assert console.device(uuid).owner_id is not None
    assert f"Claimed {uuid}." in console.flashes()[0]


@pytest.mark.parametrize("raw", ["", "not-a-uuid", "{%s}", "urn:uuid:%s", "no hyphens"])
def test_claim_refuses_malformed_uuids(console, raw):
    console.sign_in_as("alice")
    uuid = new_uuid()
    value = uuid.replace("-", "") if raw == "no hyphens" else raw.replace("%s", uuid)
    console.post("/console/claim", {"uuid": value})
    assert console.flashes()[0].startswith("Device UUID must be a hyphenated 8-4-4-4-12 hex uuid")
    assert console.device(uuid) is None


def test_claim_of_another_owners_master_says_why(console, devices):
    theirs = devices.master(owner="bob")
    console.sign_in_as("alice")
    console.post("/console/claim", {"uuid": theirs})
    assert console.flashes() == ["Device already claimed by another owner."]
    assert devices.get(theirs).owner_id != console.sign_in_as("alice")


def test_claim_of_an_agent_says_why(console, devices):
    agent = devices.agent()
    console.sign_in_as("alice")
    console.post("/console/claim", {"uuid": agent})
    assert console.flashes() == ["An agent cannot be claimed; link it to a master."]


@pytest.mark.parametrize(
    ("name", "stored", "message"),
    [
        ("  Greenhouse  ", "Greenhouse", "Renamed to Greenhouse."),
        ("Ünïcødé ☀", "Ünïcødé ☀", "Renamed to Ünïcødé ☀."),
        ("", None, "Name cleared."),
        ("x" * 65, "old", "Name must be 1-64 characters without control characters."),
        ("bell\x07", "old", "Name must be 1-64 characters without control characters."),
        ("nul\x00", "old", "Name must be 1-64 characters without control characters."),
    ],
)
def test_rename(console, devices, app, name, stored, message):
    master = devices.master(owner="alice")
    with app.app_context():
        db.session.get(Device, master).name = "old"
        db.session.commit()
    console.sign_in_as("alice")
    response = console.post(f"/console/devices/{master}/name", {"name": name, "next": "/console"})
    assert response.headers["Location"] == "/console"
    assert console.device(master).name == stored
    assert console.flashes() == [message]


def test_link_an_agent(console, devices):
    master = devices.master(owner="alice")
    console.sign_in_as("alice")
    agent = new_uuid()
    response = console.post(f"/console/devices/{master}/agents", {"agent_uuid": agent})
    assert response.headers["Location"] == f"/console/devices/{master}"
    assert console.device(agent).master_uuid == master
    assert console.flashes(f"/console/devices/{master}") == [f"Linked agent {agent} to {master}."]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("malformed", "Agent UUID must be a hyphenated 8-4-4-4-12 hex uuid"),
        ("elsewhere", "Agent already linked to another master."),
        ("a master", "The second device is not an agent."),
        ("on an agent", "Only a master can have agents."),
    ],
)
def test_link_refusals_say_why(console, devices, app, case, message):
    master = devices.master(owner="alice")
    mine = devices.agent(master)
    target, agent = master, new_uuid()
    if case == "malformed":
        agent = "nope"
    elif case == "elsewhere":
        agent = devices.agent(devices.master(owner="bob"))
    elif case == "a master":
        agent = devices.master(owner="carol")
    else:
        target = mine
    console.sign_in_as("alice")
    console.post(f"/console/devices/{target}/agents", {"agent_uuid": agent})
    assert console.flashes()[0].startswith(message)
    with app.app_context():
        linked = db.session.execute(select(Device.uuid).filter_by(master_uuid=master))
        assert linked.scalars().all() == [mine]


def test_revoke_asks_then_bumps_the_token_version(console, devices, client):
    master = devices.master(owner="alice")
    old = devices.token(master)
    assert client.get("/mqtt", headers={"Authorization": f"Bearer {old}"}).status_code == 200
    console.sign_in_as("alice")
    page = console.page(f"/console/devices/{master}/revoke?next=/console")
    assert f"Revoke {master}?" in page
    assert 'href="/console">Cancel</a>' in page
    assert devices.get(master).token_version == 1  # asking changed nothing
    response = console.post(f"/console/devices/{master}/revoke", {"next": "/console"})
    assert response.headers["Location"] == "/console"
    assert devices.get(master).token_version == 2
    assert client.get("/mqtt", headers={"Authorization": f"Bearer {old}"}).status_code == 403


def test_release_asks_then_unlinks_and_revokes(console, devices):
    master = devices.master(owner="alice")
    agent = devices.agent(master)
    console.sign_in_as("alice")
    assert "Release" in console.page(f"/console/devices/{master}/release")
    assert devices.get(master).owner_id is not None
    page = f"/console/devices/{master}"
    response = console.post(f"{page}/release", {"next": page})
    assert response.headers["Location"] == "/console"
    assert devices.get(master).owner_id is None
    assert devices.get(agent).master_uuid is None
    assert devices.get(agent).token_version == 2


def test_unlink_asks_then_unlinks(console, devices):
    master = devices.master(owner="alice")
    agent = devices.agent(master)
    console.sign_in_as("alice")
    assert "Unlink" in console.page(f"/console/devices/{agent}/unlink")
    page = f"/console/devices/{agent}"
    response = console.post(f"{page}/unlink", {"next": page})
    # Its own page is gone: back to its former master's.
    assert response.headers["Location"] == f"/console/devices/{master}"
    assert devices.get(agent).master_uuid is None
    assert devices.get(agent).token_version == 2


@pytest.mark.parametrize(("action", "kind"), [("release", "agent"), ("unlink", "master")])
def test_release_and_unlink_refuse_the_other_kind(console, devices, action, kind):
    master = devices.master(owner="alice")
    target = master if kind == "master" else devices.agent(master)
    console.sign_in_as("alice")
    for response in (
        console.client.get(f"/console/devices/{target}/{action}"),
        console.post(f"/console/devices/{target}/{action}"),
    ):
        assert response.status_code == 400
    assert devices.get(master).owner_id is not None


@pytest.mark.parametrize(
    "target",
    ["//evil.example/x", "https://evil.example/console", "/\\evil.example", "/consolex",
     "/auth/users/login", "javascript:alert(1)", "/console\r\nSet-Cookie: x=y"],
)  # fmt: skip
def test_next_never_leaves_the_console(console, devices, target):
    master = devices.master(owner="alice")
    console.sign_in_as("alice")
    response = console.post(f"/console/devices/{master}/name", {"name": "n", "next": target})
    assert response.headers["Location"] == f"/console/devices/{master}"


# ---------------------------------------------------------------- other owners


def test_another_owners_device_is_404_everywhere(console, devices, app):
    theirs = devices.master(owner="bob")
    their_agent = devices.agent(theirs)
    console.sign_in_as("alice")
    before = snapshot(app)
    for path in (
        f"/console/devices/{theirs}",
        f"/console/devices/{theirs}/revoke",
        f"/console/devices/{theirs}/release",
        f"/console/devices/{their_agent}",
        f"/console/devices/{their_agent}/unlink",
        f"/console/devices/{new_uuid()}",  # and one nobody has: the same answer
        "/console/devices/not-a-uuid",
    ):
        response = console.client.get(path)
        assert response.status_code == 404, path
        assert "No such device." in response.get_data(as_text=True)
    for path, form in (
        (f"/console/devices/{theirs}/name", {"name": "mine now"}),
        (f"/console/devices/{theirs}/agents", {"agent_uuid": new_uuid()}),
        (f"/console/devices/{theirs}/revoke", {}),
        (f"/console/devices/{theirs}/release", {}),
        (f"/console/devices/{their_agent}/unlink", {}),
        (f"/console/devices/{their_agent}/revoke", {}),
    ):
        assert console.post(path, form).status_code == 404, path
    assert snapshot(app) == before


# ---------------------------------------------------------------- the device page


def test_device_page_shows_every_field_topics_and_sketch_settings(console, devices, app):
    master = devices.master(owner="alice")
    agent = devices.agent(master)
    devices.remember_session(master, "esp-client-1")
    devices.remember_session(master, "laptop-debug")
    console.sign_in_as("alice")
    text = console.page(f"/console/devices/{master}")
    for field in ("UUID", "Kind", "Name", "Last seen", "Owner", "Agents",
                  "Registered", "Enabled", "Token version", "MQTT sessions", "Created",
                  "Updated"):  # fmt: skip
        assert f"<dt>{field}</dt>" in text, field
    assert "<code>esp-client-1</code>" in text and "<code>laptop-debug</code>" in text
    for topic in (f"device/{master}/ping", f"device/{master}/data", f"device/{agent}/master"):
        assert f"<code>{topic}</code>" in text
    assert 'config.serverUrl = "http://localhost";' in text
    assert f'config.uuid = "{master}";' in text
    assert "config.kind = smserver::kMaster;" in text
    assert f'device.addAgent("{agent}");' in text
    agent_page = console.page(f"/console/devices/{agent}")
    assert "<dt>Master</dt>" in agent_page
    assert "config.kind = smserver::kAgent;" in agent_page
    assert f"<code>device/{agent}/master</code>" in agent_page


def test_no_page_shows_a_secret(console, devices, app):
    master = devices.master(owner="alice")
    devices.agent(master)
    token = devices.token(master)
    secrets = [
        app.config[name]
        for name in (
            "JWT_SECRET",
            "DEVICE_MASTER_SECRET_KEY",
            "DEVICE_AGENT_SECRET_KEY",
            "MQTT_SECRET_KEY",
            "SECRET_KEY",
        )  # fmt: skip
    ]
    console.sign_in_as("alice")
    for path in ("/console", f"/console/devices/{master}", "/console/presence"):
        text = console.page(path)
        for secret in [*secrets, token, MASTER_SECRET, MQTT_SECRET]:
            assert secret not in text, path


def test_the_sketch_url_follows_the_proxy(app_config, devices):
    app = create_app({**app_config, "TRUSTED_PROXIES": 1})
    console = Console(app, app.test_client())
    master = devices.master(owner="alice")
    console.sign_in_as("alice")
    text = console.client.get(
        f"/console/devices/{master}",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "iot.example.com",
                 "X-Forwarded-For": "192.0.2.1"},
    ).get_data(as_text=True)  # fmt: skip
    assert 'config.serverUrl = "https://iot.example.com";' in text
    with app.app_context():
        db.engine.dispose()


# ---------------------------------------------------------------- hostile input


HOSTILE = ["%00", "..%2F..%2Fetc", "a" * 3000, "%F0%9F%92%A9", "%ff%fe", "<script>", "' OR 1=1 --"]


def test_hostile_paths_and_forms_never_fail(console, devices, app):
    master = devices.master(owner="alice")
    console.sign_in_as("alice")
    token = console.csrf_token("/console")
    before = snapshot(app)
    for raw in HOSTILE:
        for path in (f"/console/devices/{raw}", f"/console/devices/{raw}/revoke"):
            response = console.client.get(path)
            assert response.status_code == 404, (path, response.status_code)
        for route, field in (("/console/claim", "uuid"), (f"/console/devices/{master}/agents",
                                                          "agent_uuid")):  # fmt: skip
            response = console.client.post(route, data={field: raw, "csrf_token": token})
            assert response.status_code == 303, (route, raw)
        with app.app_context():
            limiter.reset()  # one sign-in per value: the /auth/* limit is not under test
        response = console.client.post(
            "/console/sign-in", data={"username": raw, "password": raw, "csrf_token": token}
        )
        assert response.status_code == 403, raw
    assert snapshot(app) == before
    response = console.client.post(
        "/console/claim", data=b"\xff" * 70_000, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413


# ---------------------------------------------------------------- the migration


def test_the_migration_matches_the_model(app):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with app.app_context(), db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), db.metadata)
    mine = [d for d in diff if "console_sessions" in repr(d)]
    assert mine == []
