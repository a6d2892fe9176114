"""Initial schema: businesses, services, staff, contacts, calls, holds, appointments, leads.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "business",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("timezone", sa.String(), nullable=False),
        sa.Column("phone_numbers", sa.JSON(), nullable=False),
        sa.Column("transfer_number", sa.String(), nullable=True),
        sa.Column("greeting", sa.String(), nullable=True),
        sa.Column("policies", sa.String(), nullable=True),
    )
    op.create_table(
        "service",
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_before_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_after_minutes", sa.Integer(), nullable=False),
        sa.Column("min_notice_minutes", sa.Integer(), nullable=False),
        sa.Column("max_days_ahead", sa.Integer(), nullable=False),
        sa.Column("slot_step_minutes", sa.Integer(), nullable=False),
        sa.Column("staff_ids", sa.JSON(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_table(
        "staff",
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("timezone", sa.String(), nullable=True),
        sa.Column("weekly_hours", sa.JSON(), nullable=False),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("time_off", sa.JSON(), nullable=False),
        sa.Column("calendars", sa.JSON(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_table(
        "contact",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False, index=True
        ),
        sa.Column("phone", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("email", sa.String(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("business_id", "phone"),
    )
    op.create_table(
        "call",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False, index=True
        ),
        sa.Column("call_sid", sa.String(), nullable=True, unique=True),
        sa.Column("from_number", sa.String(), nullable=True),
        sa.Column("to_number", sa.String(), nullable=True),
        sa.Column("contact_id", sa.String(), sa.ForeignKey("contact.id"), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("transcript", sa.JSON(), nullable=False),
        sa.Column("summary", sa.String(), nullable=True),
    )
    op.create_table(
        "hold",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("service_id", sa.String(), nullable=False),
        sa.Column("staff_id", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("start", TS, nullable=False),
        sa.Column("end", TS, nullable=False),
        sa.Column("block_start", TS, nullable=False),
        sa.Column("block_end", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("business_id", "holder"),
    )
    op.create_table(
        "appointment",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("service_id", sa.String(), nullable=False),
        sa.Column("staff_id", sa.String(), nullable=False),
        sa.Column(
            "contact_id", sa.String(), sa.ForeignKey("contact.id"), nullable=False, index=True
        ),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("start", TS, nullable=False),
        sa.Column("end", TS, nullable=False),
        sa.Column("block_start", TS, nullable=False),
        sa.Column("block_end", TS, nullable=False),
        sa.Column("booked_by", sa.String(), nullable=False),
        sa.Column("call_id", sa.String(), sa.ForeignKey("call.id"), nullable=True),
        sa.Column("notes", sa.String(), nullable=True),
        sa.Column("rescheduled_from", sa.String(), nullable=True),
        sa.Column("rescheduled_to", sa.String(), nullable=True),
        sa.Column("sync_state", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index(
        "ix_appointment_staff_block", "appointment", ["business_id", "staff_id", "block_start"]
    )
    op.create_table(
        "lead",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False, index=True
        ),
        sa.Column("contact_id", sa.String(), sa.ForeignKey("contact.id"), nullable=True),
        sa.Column("call_id", sa.String(), sa.ForeignKey("call.id"), nullable=True),
        sa.Column("appointment_id", sa.String(), sa.ForeignKey("appointment.id"), nullable=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("phone", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        # The final guard against double booking: no two confirmed blocks of one staff member
        # may overlap, whatever the application code does.
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE appointment ADD CONSTRAINT appointment_no_overlap EXCLUDE USING gist "
            "(business_id WITH =, staff_id WITH =, "
            "tstzrange(block_start, block_end, '[)') WITH &&) WHERE (status = 'confirmed')"
        )


def downgrade() -> None:
    for table in ("lead", "appointment", "hold", "call", "contact", "staff", "service", "business"):
        op.drop_table(table)
