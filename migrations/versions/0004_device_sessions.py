"""Several MQTT sessions per device: `device_sessions` replaces `devices.mqtt_client_id`.

A device may hold several sessions under different client ids (SPEC.md, "Sessions"); the
hooks remember up to 16 per device, each with the token version it logged in with. The one
client id each device had is carried over, so live sessions survive the upgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    """Create device_sessions, carry each remembered client id over, drop the old column."""
    op.create_table('device_sessions',
    sa.Column('device_uuid', sa.String(length=36), nullable=False),
    sa.Column('client_id', sa.String(length=256), nullable=False),
    sa.Column('token_version', sa.Integer(), nullable=False),
    sa.Column('authenticated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_uuid'], ['devices.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('device_uuid', 'client_id')
    )
    op.execute(
        "INSERT INTO device_sessions (device_uuid, client_id, token_version, authenticated_at)"
        " SELECT uuid, mqtt_client_id, token_version, updated_at FROM devices"
        " WHERE mqtt_client_id IS NOT NULL"
    )
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('mqtt_client_id')


def downgrade():
    """Keep the most recently authenticated client id of each device, drop the table."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mqtt_client_id', sa.String(length=256), nullable=True))
    op.execute(
        "UPDATE devices SET mqtt_client_id = (SELECT s.client_id FROM device_sessions s"
        " WHERE s.device_uuid = devices.uuid AND s.token_version = devices.token_version"
        " ORDER BY s.authenticated_at DESC LIMIT 1)"
    )
    op.drop_table('device_sessions')
