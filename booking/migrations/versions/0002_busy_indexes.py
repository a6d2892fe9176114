"""Indexes that let slot search skip past appointments and expired holds.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Busy lookups bound block_start on both sides (blocks are at most a day long), so this
    # covering index answers them without touching the table or the rest of the year.
    op.create_index(
        "ix_appointment_busy",
        "appointment",
        ["business_id", "staff_id", "block_start", "block_end", "status"],
    )
    op.create_index("ix_hold_busy", "hold", ["business_id", "staff_id", "block_start"])


def downgrade() -> None:
    op.drop_index("ix_hold_busy", "hold")
    op.drop_index("ix_appointment_busy", "appointment")
