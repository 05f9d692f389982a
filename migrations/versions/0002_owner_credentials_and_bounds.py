"""Owner credentials and bounds: owner token versions, disabled owners, device registered_at.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 20:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    """Owners get a token version and an enabled flag; devices remember when they were
    first registered (a device that never was is forgotten after a week)."""
    with op.batch_alter_table('owners', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_version', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('enabled', sa.Boolean(), server_default=sa.true(), nullable=False))

    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('registered_at', sa.DateTime(timezone=True), nullable=True))

    # Every device that is registered now, or ever was (its tokens were revoked since, or it
    # was heard from), counts as registered: only the never-registered are ever pruned.
    op.execute(
        "UPDATE devices SET registered_at = updated_at "
        "WHERE owner_id IS NOT NULL OR master_uuid IS NOT NULL "
        "OR token_version > 1 OR last_seen_at IS NOT NULL"
    )


def downgrade():
    """Drop the three columns."""
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('registered_at')

    with op.batch_alter_table('owners', schema=None) as batch_op:
        batch_op.drop_column('enabled')
        batch_op.drop_column('token_version')
