import logging

import click
from alembic import context
from flask import current_app
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from iot_server import database

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Logging is the app's (iot_server.logs): no fileConfig here, which would replace its
# handler. Alembic's own INFO lines ("setup plugin …", "Context impl …") are chatter; each
# applied migration is reported in one plain line instead (`report_step`), unless the
# caller passes `-x quiet=1` (`flask dev` migrates silently before its banner).
logging.getLogger("alembic").setLevel(logging.WARNING)
logger = logging.getLogger("alembic.env")
QUIET = bool(context.get_x_argument(as_dictionary=True).get("quiet"))


APPLIED: list[str] = []


def report_step(ctx, step, heads, run_args):
    """Note which migration was applied (printed once they all are: PostgreSQL rolls the
    whole run back when one fails)."""
    source = ", ".join(step.source_revision_ids) or "empty"
    target = ", ".join(step.destination_revision_ids) or "empty"
    script = step.up_revision
    summary = (script.doc or "").splitlines()[0] if script is not None else ""
    verb = "upgraded" if step.is_upgrade else "downgraded"
    APPLIED.append(f"{verb} {source} -> {target}" + (f": {summary}" if summary else ""))


def get_engine():
    return current_app.extensions["migrate"].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace("%", "%%")
    except AttributeError:
        return str(get_engine().url).replace("%", "%%")


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option("sqlalchemy.url", get_engine_url())
target_db = current_app.extensions["migrate"].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=get_metadata(), literal_binds=True)

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = current_app.extensions["migrate"].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives
    conf_args["on_version_apply"] = report_step

    connectable = get_engine()

    try:
        connection = connectable.connect()
    except OperationalError as exc:
        # One line naming the fix (SPEC.md, "Admin CLI"), not a driver traceback.
        raise click.ClickException(database.failure_line(exc, connectable.url)) from None
    with connection:
        context.configure(connection=connection, target_metadata=get_metadata(), **conf_args)

        try:
            with context.begin_transaction():
                context.run_migrations()
        except SQLAlchemyError as exc:
            # The database's own words are what a person acts on; the stack is noise.
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise click.ClickException(f"the migration failed: {reason}") from None
    if not QUIET:
        for line in APPLIED:
            click.echo(line)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
