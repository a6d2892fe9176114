"""Outgoing webhooks: endpoints, deliveries, and the outbox fan-out marker.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False, index=True
        ),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("secret", sa.String(), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("webhook_id", sa.String(), sa.ForeignKey("webhook.id"), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("claim", sa.String(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("last_response_ms", sa.Integer(), nullable=True),
        sa.Column("last_attempt_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("webhook_id", "event_id"),
    )
    op.create_index("ix_webhook_delivery_due", "webhook_delivery", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_delivery_log", "webhook_delivery", ["webhook_id", "created_at"])
    op.create_table(
        "webhook_fanout",
        sa.Column("event_id", sa.String(), primary_key=True),
        sa.Column("event_created_at", TS, nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
    )
    op.create_index("ix_webhook_fanout_event_created_at", "webhook_fanout", ["event_created_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_fanout_event_created_at", "webhook_fanout")
    op.drop_table("webhook_fanout")
    op.drop_index("ix_webhook_delivery_log", "webhook_delivery")
    op.drop_index("ix_webhook_delivery_due", "webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_table("webhook")
