"""Linked calendar accounts, their busy cache, change channels, written events, OAuth flows,
and the outbox of domain events.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calendarconnection",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("staff_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("read_calendars", sa.JSON(), nullable=False),
        sa.Column("write_calendar", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("sync", sa.JSON(), nullable=False),
        sa.Column("dirty_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index(
        "ix_calendar_connection_staff", "calendarconnection", ["business_id", "staff_id"]
    )
    op.create_table(
        "calendar_busy",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "connection_id", sa.String(), sa.ForeignKey("calendarconnection.id"), nullable=False
        ),
        sa.Column("business_id", sa.String(64), nullable=False),
        sa.Column("staff_id", sa.String(64), nullable=False),
        sa.Column("calendar_id", sa.String(), nullable=False),
        sa.Column("event_key", sa.String(), nullable=False),
        sa.Column("start", TS, nullable=False),
        sa.Column("end", TS, nullable=False),
    )
    op.create_index("ix_calendar_busy_staff", "calendar_busy", ["business_id", "staff_id", "start"])
    op.create_index(
        "ix_calendar_busy_event", "calendar_busy", ["connection_id", "calendar_id", "event_key"]
    )
    op.create_table(
        "calendarchannel",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "connection_id",
            sa.String(),
            sa.ForeignKey("calendarconnection.id"),
            nullable=False,
            index=True,
        ),
        sa.Column("calendar_id", sa.String(), nullable=False),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=True),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "calendarevent",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column(
            "connection_id", sa.String(), sa.ForeignKey("calendarconnection.id"), nullable=False
        ),
        sa.Column("calendar_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "oauthflow",
        sa.Column("state", sa.String(), primary_key=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("business_id", sa.String(64), nullable=False),
        sa.Column("staff_id", sa.String(64), nullable=False),
        sa.Column("flow", sa.Text(), nullable=False),
        sa.Column("return_to", sa.String(), nullable=True),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_table(
        "outboxevent",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_outbox_business_created", "outboxevent", ["business_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_business_created", "outboxevent")
    op.drop_table("outboxevent")
    op.drop_table("oauthflow")
    op.drop_table("calendarevent")
    op.drop_table("calendarchannel")
    op.drop_index("ix_calendar_busy_event", "calendar_busy")
    op.drop_index("ix_calendar_busy_staff", "calendar_busy")
    op.drop_table("calendar_busy")
    op.drop_index("ix_calendar_connection_staff", "calendarconnection")
    op.drop_table("calendarconnection")
