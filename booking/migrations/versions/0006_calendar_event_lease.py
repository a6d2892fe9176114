"""A lease on a calendar event's write, so two writers never race on one event.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calendarevent") as batch:
        batch.add_column(sa.Column("writing_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calendarevent") as batch:
        batch.drop_column("writing_until")
