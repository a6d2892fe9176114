"""One of each job across workers: singleton job leases, per-row claims on calendar connections,
and the durable SMS outbox.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "job_lease",
        sa.Column("name", sa.String(80), primary_key=True),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_table(
        "sms_message",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("to_number", sa.String(40), nullable=False),
        sa.Column("from_number", sa.String(40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("claim", sa.String(40), nullable=True),
        sa.Column("claimed_until", TS, nullable=True),
        sa.Column("sid", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.UniqueConstraint("business_id", "key", name="uq_sms_message_key"),
    )
    op.create_index("ix_sms_message_due", "sms_message", ["status", "next_attempt_at"])
    with op.batch_alter_table("calendarconnection") as batch:
        batch.add_column(sa.Column("claim", sa.String(40), nullable=True))
        batch.add_column(sa.Column("claimed_until", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calendarconnection") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claim")
    op.drop_index("ix_sms_message_due", "sms_message")
    op.drop_table("sms_message")
    op.drop_table("job_lease")
