"""Whether the database can serve the code: reachable, created, migrated to the latest
revision. Each problem is one line naming what to do, for the admin CLI, `flask db` and
`flask dev` (SPEC.md, "Admin CLI": never a traceback).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

#: The migrations directory (Flask-Migrate's, beside the package).
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
UPGRADE = "run `flask --app wsgi db upgrade`"


def shown_url(url) -> str:
    """The URL without its password, for messages."""
    return make_url(str(url)).render_as_string(hide_password=True)


def failure_line(exc: BaseException, url) -> str:
    """One line for a database failure, naming the fix when the cause is a known one."""
    reason = str(getattr(exc, "orig", None) or exc).strip()
    first = reason.splitlines()[0] if reason else type(exc).__name__
    lowered = reason.lower()
    where = shown_url(url)
    parsed = make_url(str(url))
    if parsed.get_backend_name() == "sqlite":
        if "unable to open database file" in lowered:
            return (
                f"cannot open the SQLite database {where}: check DATABASE_URL and that its "
                "folder exists and is writable"
            )
        return f"database error on {where}: {first}"
    if "database" in lowered and "does not exist" in lowered:
        name = parsed.database or "?"
        createdb = " ".join(
            ["createdb"]
            + ([f"-h {parsed.host}"] if parsed.host else [])
            + ([f"-p {parsed.port}"] if parsed.port else [])
            + ([f"-U {parsed.username}"] if parsed.username else [])
            + [name]
        )
        return f'database "{name}" does not exist: create it ({createdb}), then {UPGRADE}'

    if "password authentication failed" in lowered or (
        "role" in lowered and "does not exist" in lowered
    ):
        return (
            f"the database refused the login ({where}): check the user and password in DATABASE_URL"
        )
    unreachable = (
        "connection refused",
        "could not translate host name",
        "name or service not known",
        "timeout expired",
        "timed out",
        "no route to host",
        "network is unreachable",
        "server closed the connection",
        "connection failed",
    )
    if any(marker in lowered for marker in unreachable):
        return (
            f"cannot reach the database at {where}: start it, or set DATABASE_URL ({_cause(first)})"
        )
    return f"database error on {where}: {first}"


def _cause(line: str) -> str:
    """The end of a driver's message: its most specific part."""
    return line.rsplit(": ", 1)[-1].strip() or line


def _scripts():
    """Alembic's view of the migrations this code ships."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def schema_problem(connection: Connection) -> str | None:
    """Why the schema behind `connection` does not fit this code, or None."""
    from alembic.runtime.migration import MigrationContext

    current = set(MigrationContext.configure(connection).get_current_heads())
    scripts = _scripts()
    latest = set(scripts.get_heads())
    if current == latest:
        return None
    if not current:
        return f"the database has no tables yet: {UPGRADE}"
    if not current <= {script.revision for script in scripts.walk_revisions()}:
        return (
            f"the database is at revision {', '.join(sorted(current))}, which this code does "
            f"not know (it needs {', '.join(sorted(latest))}): deploy the matching code"
        )
    return (
        f"the database is at revision {', '.join(sorted(current))}, this code needs "
        f"{', '.join(sorted(latest))}: {UPGRADE}"
    )


def readiness_problem(engine: Engine) -> str | None:
    """One line saying why the database cannot serve this code, or None when it can."""
    try:
        with engine.connect() as connection:
            return schema_problem(connection)
    except SQLAlchemyError as exc:
        return failure_line(exc, engine.url)
