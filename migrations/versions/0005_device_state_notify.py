"""Announce every change of a device's state on PostgreSQL (LISTEN/NOTIFY).

Triggers send `NOTIFY iot_device_state, '<uuid>[,<uuid>…]'` in the transaction that changes
a device's kind, token version, enabled flag, owner or master (with the master, whose ACL
lists its agents), or its remembered sessions, so every process's device-state cache
(`iot_server/broker/state_cache.py`) drops it when the change commits, whoever made it.
A session refresh (only `authenticated_at` moves) announces nothing. SQLite has no NOTIFY:
nothing to do there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 21:00:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION iot_notify_device_state() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed text;
BEGIN
    IF TG_TABLE_NAME = 'device_sessions' THEN
        IF TG_OP = 'DELETE' THEN
            changed := OLD.device_uuid;
        ELSE
            changed := NEW.device_uuid;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        changed := concat_ws(',', OLD.uuid, OLD.master_uuid);
    ELSIF TG_OP = 'INSERT' THEN
        changed := concat_ws(',', NEW.uuid, NEW.master_uuid);
    ELSE
        changed := concat_ws(
            ',', NEW.uuid, OLD.master_uuid, NULLIF(NEW.master_uuid, OLD.master_uuid)
        );
    END IF;
    PERFORM pg_notify('iot_device_state', changed);
    RETURN NULL;
END
$$
"""

TRIGGERS = (
    "CREATE TRIGGER devices_notify_state AFTER INSERT OR DELETE ON devices"
    " FOR EACH ROW EXECUTE FUNCTION iot_notify_device_state()",
    "CREATE TRIGGER devices_notify_state_update AFTER UPDATE ON devices FOR EACH ROW"
    " WHEN ((OLD.kind, OLD.token_version, OLD.enabled, OLD.owner_id, OLD.master_uuid)"
    " IS DISTINCT FROM (NEW.kind, NEW.token_version, NEW.enabled, NEW.owner_id,"
    " NEW.master_uuid)) EXECUTE FUNCTION iot_notify_device_state()",
    "CREATE TRIGGER device_sessions_notify_state AFTER INSERT OR DELETE ON device_sessions"
    " FOR EACH ROW EXECUTE FUNCTION iot_notify_device_state()",
    "CREATE TRIGGER device_sessions_notify_state_update AFTER UPDATE ON device_sessions"
    " FOR EACH ROW WHEN (OLD.token_version IS DISTINCT FROM NEW.token_version)"
    " EXECUTE FUNCTION iot_notify_device_state()",
)


def upgrade():
    """Create the function and its four triggers (PostgreSQL only)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for statement in TRIGGERS:
        op.execute(statement)


def downgrade():
    """Drop the triggers and the function (PostgreSQL only)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS devices_notify_state ON devices")
    op.execute("DROP TRIGGER IF EXISTS devices_notify_state_update ON devices")
    op.execute("DROP TRIGGER IF EXISTS device_sessions_notify_state ON device_sessions")
    op.execute(
        "DROP TRIGGER IF EXISTS device_sessions_notify_state_update ON device_sessions"
    )
    op.execute("DROP FUNCTION IF EXISTS iot_notify_device_state()")
