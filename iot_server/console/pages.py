"""Blueprint `console`: the owner console's pages (SPEC.md, "Owner console").

Every action is a plain HTML form: it posts, the view acts, then redirects to a page that
shows the flashed outcome (POST/redirect/GET). Revoke, release and unlink first show a
confirmation page (GET) whose own form does the work, so they ask before acting without
any script. The one script only refreshes presence from `/console/presence`. The rules
themselves live in `devices` and `owners`; this module parses forms and renders pages.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import wraps
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, NotFound, ServiceUnavailable

from .. import devices, owners, policy
from ..errors import ApiError, discard_session, error_response, is_database_outage
from ..extensions import db, limiter
from ..identifiers import UUID_FORM, UUID_PATTERN, parse_uuid
from ..models import AGENT, DEVICE_NAME_MAX, MASTER, Device, is_device_name, iso_utc, utcnow
from . import csrf, sessions

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static")
log = logging.getLogger("iot_server.console")

#: Signing in and creating an account spend the /auth/* bucket of the client's IP, so
#: password guessing gets the same budget whichever door it knocks on (SPEC.md).
auth_limit = limiter.shared_limit(
    lambda: current_app.config["RATELIMIT_AUTH"], scope="auth", methods=["POST"]
)

#: How often the script asks for presence: the pinger writes `last_seen_at` within 1 s,
#: so a device shows online within 1 + 2 s (+ a request) of its first PING.
PRESENCE_POLL_MS = 2000

#: No inline script or style anywhere: every script, style and image comes from /console.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

#: What each confirmed action does, for its confirmation page and its button.
CONFIRMATIONS = {
    "revoke": (
        "Revoke",
        "Its tokens stop working at once and its live MQTT session is cut. The device gets "
        "a new token the next time it registers.",
    ),
    "release": (
        "Release",
        "You give up this master: its agents are unlinked, it and they are revoked, and "
        "its name is cleared. Anyone may claim it afterwards.",
    ),
    "unlink": (
        "Unlink",
        "The agent leaves its master and is revoked: it cannot connect until it is linked "
        "to a master again.",
    ),
}


# ---------------------------------------------------------------- every request


@bp.before_request
def guard() -> None:
    """CSRF check of every state-changing request, then who is signed in."""
    if request.endpoint == "console.static":
        return
    if not current_app.config.get("SECRET_KEY"):
        # Flask signs the cookie with a key derived from JWT_SECRET (see configure_derived).
        raise ServiceUnavailable("The console needs JWT_SECRET to be set on the server.")
    csrf.protect()  # 400 before the view runs: nothing changes without the token
    g.owner = sessions.current_owner()


@bp.after_request
def secure_headers(response: Response) -> Response:
    """The CSP and its companions on every console answer; pages are never cached."""
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def page_helpers() -> dict:
    """What every console template may use."""
    return {
        "owner": g.get("owner"),
        "ago": ago,
        "exact_time": exact_time,
        "iso": iso_utc,
        "label": label,
        "uuid_pattern": UUID_PATTERN,
        "name_max": DEVICE_NAME_MAX,
    }


def signed_in(view):
    """Run `view` for a signed-in owner; anyone else is sent to the sign-in page."""

    @wraps(view)
    def wrapper(**kwargs):
        if g.owner is None:
            if request.method == "GET":
                target = request.full_path.rstrip("?")
                return redirect(url_for(".sign_in", next=target))
            flash("Your session has ended. Sign in again.", "error")
            return redirect(url_for(".sign_in"), 303)
        return view(**kwargs)

    return wrapper


# ---------------------------------------------------------------- helpers


def ago(moment: datetime | None, now: datetime) -> str:
    """How long ago, as "12 s ago", "5 min ago", "3 h ago", "2 d ago" or "never" (the
    same words as console.js)."""
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def exact_time(moment: datetime | None) -> str:
    """The full UTC time, for hover titles and the device page."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def label(device: Device) -> str:
    """How a device is called on a page: its name, else its uuid."""
    return device.name or device.uuid


def sentence(message: str | None) -> str:
    """A domain error message as a sentence for a person."""
    text = (message or "that did not work").strip()
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def safe_next(target: str | None, default: str) -> str:
    """`target` when it is a path inside the console (never another site), else `default`."""
    if not target or "\\" in target or any(ord(c) < 32 for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return default
    if parts.path != "/console" and not parts.path.startswith("/console/"):
        return default
    return target


def back(default: str) -> Response:
    """303 to the page the form came from (its `next` field), or `default`."""
    return redirect(safe_next(request.form.get("next"), default), 303)


def owned(uuid: str) -> Device:
    """The signed-in owner's device at `uuid`; 404 for a malformed, unknown or foreign one."""
    parsed = parse_uuid(uuid)
    if parsed is None:
        raise ApiError(404, "no such device")
    return devices.owned_device(parsed, g.owner)


def refused(exc: ApiError) -> None:
    """Flash why the domain refused an action; a 404 stays a 404 page."""
    if exc.status == 404:
        raise exc
    flash(sentence(exc.error), "error")


def form_uuid(field: str, what: str) -> str | None:
    """The lowercase uuid typed in a form field, or None after flashing what is wrong."""
    uuid = parse_uuid(request.form.get(field, "").strip())
    if uuid is None:
        flash(f"{what} must be {UUID_FORM}, e.g. 123e4567-e89b-12d3-a456-426614174000.", "error")
    return uuid


# ---------------------------------------------------------------- accounts


@bp.route("/sign-in", methods=["GET", "POST"])
@auth_limit
def sign_in():
    """Sign in with a username and password; the same message whatever was wrong."""
    devices_page = url_for(".devices_page")
    target = request.values.get("next")
    if request.method == "GET":
        if g.owner is not None:
            return redirect(safe_next(target, devices_page))
        return render_template("console/sign_in.html", next=target)
    username = request.form.get("username", "")
    try:
        # The API's login: the per-username failure limit and the hashing cap apply here too.
        owner = owners.login(username, request.form.get("password", ""))
    except ApiError as exc:
        log.info("console sign-in refused: %s", exc.error)
        if exc.status != 403:
            raise  # 429: too many failures for this username, or busy hashing
        page = render_template(
            "console/sign_in.html",
            next=target,
            username=username,
            error="Wrong username or password.",
        )
        return page, 403
    sessions.begin(owner)
    log.info("console sign-in", extra={"owner": owner.username})
    return redirect(safe_next(target, devices_page), 303)


@bp.route("/create-account", methods=["GET", "POST"])
@auth_limit
def create_account():
    """Create an owner account (the owner API's rules) and sign it in."""
    if request.method == "GET":
        if g.owner is not None:
            return redirect(url_for(".devices_page"))
        return render_template("console/create_account.html")
    username = request.form.get("username", "")
    try:
        owner = owners.create(username, request.form.get("password", ""))
    except ApiError as exc:
        page = render_template(
            "console/create_account.html", username=username, error=sentence(exc.error)
        )
        return page, exc.status
    log.info("owner registered", extra={"owner": owner.username})
    sessions.begin(owner)
    flash(f"Welcome, {owner.username}. Claim your first device below.", "success")
    return redirect(url_for(".devices_page"), 303)


@bp.post("/sign-out")
def sign_out():
    """End the session server-side and empty the cookie."""
    sessions.end()
    flash("Signed out.", "success")
    return redirect(url_for(".sign_in"), 303)


# ---------------------------------------------------------------- devices


@bp.get("")
@signed_in
def devices_page():
    """The owner's masters, each with its agents, in one query."""
    rows = devices.listing(g.owner)
    masters = [row for row in rows if row.kind == MASTER]
    agents_of: dict[str, list] = {}
    for row in rows:
        if row.kind == AGENT and row.master_uuid:
            agents_of.setdefault(row.master_uuid, []).append(row)
    now = utcnow()
    online = {row.uuid for row in rows if devices.seen_recently(row.last_seen_at, now)}
    return render_template(
        "console/devices.html",
        masters=masters,
        agents_of=agents_of,
        online=online,
        total=len(rows),
        now=now,
        poll_ms=PRESENCE_POLL_MS,
    )


@bp.get("/devices/<uuid>")
@signed_in
def device_page(uuid: str):
    """Every field of one device, the topics it may use and what its sketch needs."""
    device = owned(uuid)
    agents = list(device.agents) if device.kind == MASTER else []
    identity = policy.device_identity(device.uuid, device.kind, [a.uuid for a in agents])
    now = utcnow()
    return render_template(
        "console/device.html",
        device=device,
        agents=agents,
        topics=policy.device_topics(identity),
        sessions=devices.session_client_ids(device),
        online={d.uuid for d in [device, *agents] if devices.seen_recently(d.last_seen_at, now)},
        now=now,
        poll_ms=PRESENCE_POLL_MS,
        server_url=request.host_url.rstrip("/"),
    )


@bp.post("/claim")
@signed_in
def claim():
    """Claim a master by uuid (created when unknown)."""
    uuid = form_uuid("uuid", "Device UUID")
    if uuid is not None:
        try:
            devices.claim(uuid, g.owner)
        except ApiError as exc:
            refused(exc)
        else:
            flash(f"Claimed {uuid}. Its page has the settings for its sketch.", "success")
    return back(url_for(".devices_page"))


@bp.post("/devices/<uuid>/name")
@signed_in
def rename(uuid: str):
    """Name a device, or clear its name with an empty field."""
    device = owned(uuid)
    name = request.form.get("name", "").strip()
    if name and not is_device_name(name):
        flash(f"Name must be 1-{DEVICE_NAME_MAX} characters without control characters.", "error")
    else:
        device.name = name or None
        db.session.commit()
        flash(f"Renamed to {name}." if name else "Name cleared.", "success")
    return back(url_for(".device_page", uuid=device.uuid))


@bp.post("/devices/<uuid>/agents")
@signed_in
def link_agent(uuid: str):
    """Link an agent (created when unknown) to one of the owner's masters."""
    master = owned(uuid)
    agent_uuid = form_uuid("agent_uuid", "Agent UUID")
    if agent_uuid is not None:
        try:
            if master.kind != MASTER:
                raise ApiError(400, "only a master can have agents")
            devices.link(master.uuid, agent_uuid)
        except ApiError as exc:
            refused(exc)
        else:
            flash(f"Linked agent {agent_uuid} to {label(master)}.", "success")
    return back(url_for(".device_page", uuid=master.uuid))


@bp.route("/devices/<uuid>/revoke", methods=["GET", "POST"])
@signed_in
def revoke(uuid: str):
    """Confirm, then invalidate the device's tokens and cut its MQTT session."""
    device = owned(uuid)
    if request.method == "GET":
        return confirmation(device, "revoke")
    devices.revoke(device)
    flash(f"Revoked {label(device)}: its old tokens no longer work.", "success")
    return back(url_for(".device_page", uuid=device.uuid))


@bp.route("/devices/<uuid>/release", methods=["GET", "POST"])
@signed_in
def release(uuid: str):
    """Confirm, then give up a master: its agents are unlinked, all of them revoked."""
    device = owned(uuid)
    if device.kind != MASTER:
        raise ApiError(400, "only a master can be released; unlink an agent instead")
    if request.method == "GET":
        return confirmation(device, "release")
    name = label(device)
    devices.release(device)
    flash(f"Released {name}.", "success")
    return redirect(url_for(".devices_page"), 303)


@bp.route("/devices/<uuid>/unlink", methods=["GET", "POST"])
@signed_in
def unlink(uuid: str):
    """Confirm, then unlink an agent from its master and revoke it."""
    device = owned(uuid)
    if device.kind != AGENT or device.master is None:
        raise ApiError(400, "only a linked agent can be unlinked; release a master instead")
    if request.method == "GET":
        return confirmation(device, "unlink")
    master, name = device.master, label(device)
    devices.unlink(master, device.uuid)
    flash(f"Unlinked {name} from {label(master)}.", "success")
    target = safe_next(request.form.get("next"), url_for(".devices_page"))
    if target == url_for(".device_page", uuid=device.uuid):
        target = url_for(".device_page", uuid=master.uuid)
    return redirect(target, 303)


def confirmation(device: Device, action: str):
    """The page that asks before a destructive action; its button does the action."""
    button, consequence = CONFIRMATIONS[action]
    cancel = safe_next(request.args.get("next"), url_for(".device_page", uuid=device.uuid))
    return render_template(
        "console/confirm.html",
        device=device,
        action=action,
        button=button,
        consequence=consequence,
        cancel=cancel,
    )


@bp.get("/presence")
def presence():
    """Online state and last-seen time of each of the owner's devices (for console.js):
    one indexed query whatever the number of devices."""
    if g.owner is None:
        return error_response(403, "signed out")
    now = utcnow()
    states = {
        uuid: {"online": devices.seen_recently(seen, now), "last_seen_at": iso_utc(seen)}
        for uuid, seen in devices.presence(g.owner)
    }
    return jsonify(c="OK", now=iso_utc(now), devices=states)


@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown_page(rest: str):
    """Any other path under /console: the console's own 404 page."""
    raise NotFound()


# ---------------------------------------------------------------- errors


def error_page(status: int, message: str) -> tuple[str, int]:
    """The console's error page: the status and what to do next."""
    return render_template("console/error.html", status=status, message=message), status


@bp.errorhandler(ApiError)
def domain_error(exc: ApiError):
    """A refusal from the domain that no form field explains (404 for foreign devices),
    with its headers (a 429's Retry-After)."""
    response = current_app.make_response(error_page(exc.status, sentence(exc.error)))
    response.headers.update(exc.headers)
    return response


@bp.errorhandler(CSRFError)
def csrf_error(exc: CSRFError):
    """A form without this session's token: 400, and nothing was done."""
    log.info("console form refused: %s", exc.description)
    message = "This form has expired or did not come from this console. Nothing was changed."
    return error_page(400, message)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    """404, 405, 413, 429, 503... as a page, keeping the headers (e.g. Retry-After)."""
    status = exc.code or 500
    messages = {
        404: "There is nothing here.",
        429: "Too many attempts from your address. Wait a few seconds and try again.",
    }
    response = current_app.make_response(
        error_page(status, messages.get(status, exc.description or exc.name))
    )
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@bp.errorhandler(Exception)
def unexpected_error(exc: Exception):
    """Roll back; 503 while the database is away, else 500, the trace only in the log."""
    discard_session()
    if is_database_outage(exc):
        log.error("database unavailable: %s", type(exc).__name__)
        return error_page(503, "The database is unavailable. Try again in a moment.")
    log.exception("unhandled error")
    return error_page(500, "Something went wrong on the server. Try again.")


def go_to_console():
    """`GET /`: the console is the front page."""
    return redirect(url_for("console.devices_page"))
