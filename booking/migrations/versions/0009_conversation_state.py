"""Durable conversations: a call (or dashboard chat) goes on in whichever worker gets its next turn.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversation_state",
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("call_id", sa.String(64), sa.ForeignKey("call.id"), nullable=True),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
    )
    op.create_index("ix_conversation_state_call_id", "conversation_state", ["call_id"])
    op.create_index("ix_conversation_state_idle", "conversation_state", ["ended_at", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_conversation_state_idle", "conversation_state")
    op.drop_index("ix_conversation_state_call_id", "conversation_state")
    op.drop_table("conversation_state")
