"""Admin CLI: `flask users ...` and `flask devices ...`, thin wrappers over the services.

Each command prints its answer and nothing else (log lines only with `--verbose`), and
exits 0 on success, or 1 with one line on stderr (click's `Error: ...`): a missing,
unreachable or unmigrated database included, named with what to do.
"""

from __future__ import annotations

import functools
import logging
import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo, get_debug_flag, with_appcontext
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.serving import is_running_from_reloader

from . import database, devices, logs, owners
from .config import REQUIRED_SECRETS
from .errors import ApiError
from .extensions import db
from .identifiers import parse_uuid
from .models import Device

log = logging.getLogger("iot_server.cli")


def set_verbosity(ctx: click.Context, param: click.Parameter, verbose: bool) -> None:
    """`--verbose` callback: our log lines at the app's level, else warnings only."""
    level = "WARNING"
    if verbose:
        level = logs.app_log_level(ctx.ensure_object(ScriptInfo).load_app().config["DEBUG_LOGS"])
    logging.getLogger(logs.ROOT_LOGGER).setLevel(level)


def database_guarded(action):
    """Run a command only on a database that fits this code, and turn any database
    failure into one line naming the fix."""

    @functools.wraps(action)
    def guarded(*args, **kwargs):
        problem = database.readiness_problem(db.engine)
        if problem is not None:
            raise click.ClickException(problem)
        try:
            return action(*args, **kwargs)
        except SQLAlchemyError as exc:
            db.session.rollback()
            raise click.ClickException(database.failure_line(exc, db.engine.url)) from None

    return guarded


class AdminGroup(AppGroup):
    """A command group whose commands answer in one line: each checks the database first,
    reports database failures in one line, and logs only with `--verbose`."""

    def command(self, *args, **kwargs):
        """`AppGroup.command`, plus the database guard and `--verbose`."""
        register = super().command(*args, **kwargs)

        def decorator(action):
            verbose = click.option(
                "--verbose",
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=set_verbosity,
                help="Also print log lines.",
            )
            return register(verbose(database_guarded(action)))

        return decorator


users_cli = AdminGroup("users", help="Manage owner accounts.")
devices_cli = AdminGroup("devices", help="Manage devices.")


def uuid_argument(value: str) -> str:
    """The normalised uuid, or a one-line usage error."""
    uuid = parse_uuid(value)
    if uuid is None:
        raise click.ClickException(f"malformed uuid: {value!r}")
    return uuid


def existing_device(value: str) -> Device:
    """The device with this uuid, or a one-line error."""
    device = devices.get(uuid_argument(value))
    if device is None:
        raise click.ClickException(f"no such device: {value}")
    return device


def fail_on_api_error(action):
    """Run `action`, turning a domain error into click's one-line failure."""
    try:
        return action()
    except ApiError as exc:
        raise click.ClickException(f"{exc.code}: {exc.error}") from None


def stdin_is_terminal() -> bool:
    """True when a person can answer a prompt (the password is not echoed)."""
    return sys.stdin.isatty()


@users_cli.command("create")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create_user(username: str, password_stdin: bool) -> None:
    """Create an owner account (the password is prompted for unless --password-stdin)."""
    password = read_password(password_stdin)
    owner = fail_on_api_error(lambda: owners.create(username, password))
    click.echo(f"created owner {owner.username}")


def existing_owner(username: str):
    """The owner with this username, or a one-line error."""
    owner = owners.by_username(owners.login_username(username) or "")
    if owner is None:
        raise click.ClickException(f"no such owner: {username}")
    return owner


def read_password(password_stdin: bool) -> str:
    """A new password from standard input, or prompted for twice at a terminal."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not stdin_is_terminal():
        raise click.ClickException(
            "no terminal to ask for the password: pipe it in with --password-stdin"
        )
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_cli.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def set_user_password(username: str, password_stdin: bool) -> None:
    """Set an owner's password; every token the owner holds ends."""
    owner = existing_owner(username)
    fail_on_api_error(lambda: owners.set_password(owner, read_password(password_stdin)))
    click.echo(f"password of {owner.username} set; earlier tokens ended")


@users_cli.command("disable")
@click.argument("username")
def disable_user(username: str) -> None:
    """Refuse the owner's logins and end every token it holds, until enabled again."""
    owner = existing_owner(username)
    owners.set_enabled(owner, False)
    click.echo(f"{owner.username} disabled")


@users_cli.command("enable")
@click.argument("username")
def enable_user(username: str) -> None:
    """Allow a disabled owner to log in again (earlier tokens stay ended)."""
    owner = existing_owner(username)
    owners.set_enabled(owner, True)
    click.echo(f"{owner.username} enabled")


@users_cli.command("revoke")
@click.argument("username")
def revoke_user(username: str) -> None:
    """End every token the owner holds (log out everywhere)."""
    owner = existing_owner(username)
    owners.revoke_tokens(owner)
    click.echo(f"{owner.username}: every token ended (token version {owner.token_version})")


LIST_HEADER = ("UUID", "KIND", "STATE", "OWNER/MASTER", "LAST SEEN")


@devices_cli.command("list")
def list_devices() -> None:
    """List every device: uuid, kind, state, owner or master, last seen."""
    rows = db.session.execute(select(Device).order_by(Device.created_at)).scalars()
    lines = [LIST_HEADER]
    for device in rows:
        state = "registered" if device.is_registered else "unregistered"
        if not device.enabled:
            state = "disabled"
        holder = device.owner.username if device.owner else (device.master_uuid or "-")
        seen = device.last_seen_at.isoformat() if device.last_seen_at else "never"
        lines.append((device.uuid, device.kind, state, holder, seen))
    widths = [max(len(line[column]) for line in lines) for column in range(len(LIST_HEADER))]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


@devices_cli.command("claim")
@click.argument("uuid")
@click.option("--owner", "username", required=True, help="The owner's username.")
def claim_device(uuid: str, username: str) -> None:
    """Give a master device to an owner (created when unknown)."""
    owner = owners.by_username(username.lower())
    if owner is None:
        raise click.ClickException(f"no such owner: {username}")
    device, _ = fail_on_api_error(lambda: devices.claim(uuid_argument(uuid), owner))
    click.echo(f"{device.uuid} claimed by {owner.username}")


@devices_cli.command("link")
@click.argument("master")
@click.argument("agent")
def link_device(master: str, agent: str) -> None:
    """Link an agent (created when unknown) to a master."""
    agent_device, _ = fail_on_api_error(
        lambda: devices.link(uuid_argument(master), uuid_argument(agent))
    )
    click.echo(f"{agent_device.uuid} linked to {agent_device.master_uuid}")


@devices_cli.command("revoke")
@click.argument("uuid")
def revoke_device(uuid: str) -> None:
    """Invalidate every token of a device and cut its live session."""
    device = existing_device(uuid)
    devices.revoke(device)
    click.echo(f"{device.uuid} revoked (token version {device.token_version})")


@devices_cli.command("disable")
@click.argument("uuid")
def disable_device(uuid: str) -> None:
    """Refuse the device tokens and connections until enabled again."""
    device = existing_device(uuid)
    devices.set_enabled(device, False)
    click.echo(f"{device.uuid} disabled")


@devices_cli.command("enable")
@click.argument("uuid")
def enable_device(uuid: str) -> None:
    """Allow a disabled device again (it must request a new token)."""
    device = existing_device(uuid)
    devices.set_enabled(device, True)
    click.echo(f"{device.uuid} enabled")


@devices_cli.command("delete")
@click.argument("uuid")
def delete_device(uuid: str) -> None:
    """Forget a device (a master's agents are unlinked and revoked) and cut its sessions."""
    device = existing_device(uuid)
    devices.delete(device)
    click.echo(f"{device.uuid} deleted")


@devices_cli.command("prune")
def prune_devices() -> None:
    """Forget devices that called in more than 7 days ago and were never claimed or linked
    (run it daily: docs/deployment.md)."""
    click.echo(f"forgot {devices.prune_unregistered()} never-registered devices")


@click.command("pinger")
@click.option(
    "--stats-interval", default=60.0, show_default=True, help="Seconds between stats log lines."
)
@with_appcontext
def pinger_command(stats_interval: float) -> None:
    """Run the MQTT pinger: answer PINGs, re-PING quiet devices, record last_seen_at."""
    from .pinger import client as pinger

    status = pinger.run_from_app(current_app._get_current_object(), stats_interval=stats_interval)
    sys.exit(status)


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=5000, show_default=True, help="The API's HTTP port.")
@click.option("--mqtt-port", default=1883, show_default=True, help="The embedded broker's port.")
def dev_command(host: str, port: int, mqtt_port: int) -> None:
    """Run the API, the embedded amqtt broker and the pinger together (development)."""
    from .dev import stack as devstack

    try:
        status = devstack.run(host, port, mqtt_port, echo=click.echo)
    except devstack.StackError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(status)


def warn_if_served_without_secrets(app: Flask) -> None:
    """`flask run` without the secrets starts (SPEC.md), but says once, at start, that
    registrations will fail and what to run instead. Other commands need no secret."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "run":
        return
    missing = [name for name in REQUIRED_SECRETS if not app.config.get(name)]
    if not missing:
        return
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    if reload and not is_running_from_reloader():
        return  # the reloader's watcher: the child that serves warns
    log.warning(
        "%s not set: device registrations and broker logins will fail; for development "
        "run `flask --app wsgi dev`, which generates them",
        ", ".join(missing),
    )


def init_app(app: Flask) -> None:
    """Register the command groups on the app."""
    app.cli.add_command(users_cli)
    app.cli.add_command(devices_cli)
    app.cli.add_command(pinger_command)
    app.cli.add_command(dev_command)
    warn_if_served_without_secrets(app)
