"""Reminders and the text channel: reminder settings per business and service, the business's
address (for the reminder's wording), a caller's own confirmation of an appointment and whether
they came (attended / no-show, marked by staff), what each
text is about and how Twilio says it was delivered, opt-outs per business number, and inbound
texts kept once per Twilio MessageSid, and the waitlist.

Columns are added with ALTER TABLE ADD COLUMN, never a batch rebuild, so SQLite keeps the
catalogue triggers of migration 0011 on business and service.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("business", sa.Column("address", sa.String(), nullable=True))
    op.add_column("business", sa.Column("reminders", sa.JSON(), nullable=True))
    op.add_column("service", sa.Column("reminders", sa.JSON(), nullable=True))
    op.add_column("appointment", sa.Column("caller_confirmed_at", TS, nullable=True))
    op.add_column("call", sa.Column("channel", sa.String(16), nullable=True))
    op.add_column("appointment", sa.Column("attendance", sa.String(16), nullable=True))
    op.add_column("appointment", sa.Column("attendance_at", TS, nullable=True))
    op.add_column("sms_message", sa.Column("kind", sa.String(16), nullable=True))
    op.add_column("sms_message", sa.Column("appointment_id", sa.String(64), nullable=True))
    op.add_column("sms_message", sa.Column("delivery_status", sa.String(24), nullable=True))
    op.add_column("sms_message", sa.Column("delivery_error", sa.String(16), nullable=True))
    op.add_column("sms_message", sa.Column("delivery_at", TS, nullable=True))
    op.create_index("ix_sms_message_appointment", "sms_message", ["appointment_id"])
    op.create_index("ix_sms_message_sid", "sms_message", ["sid"])
    op.create_table(
        "sms_opt_out",
        sa.Column("sender", sa.String(40), primary_key=True),
        sa.Column("phone", sa.String(40), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("changed_at", TS, nullable=False),
    )
    op.create_table(
        "inbound_sms",
        sa.Column("message_sid", sa.String(64), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("from_number", sa.String(40), nullable=False),
        sa.Column("to_number", sa.String(40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("handled_as", sa.String(24), nullable=False),
        sa.Column("appointment_id", sa.String(64), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_index("ix_inbound_sms_from", "inbound_sms", ["business_id", "from_number"])
    op.create_table(
        "waitlist_entry",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False),
        sa.Column("contact_id", sa.String(64), sa.ForeignKey("contact.id"), nullable=False),
        sa.Column("phone", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("staff_id", sa.String(64), nullable=True),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("passed", sa.JSON(), nullable=False),
        sa.Column("hold_id", sa.String(64), nullable=True),
        sa.Column("offered_start", TS, nullable=True),
        sa.Column("offered_staff_id", sa.String(64), nullable=True),
        sa.Column("offer_expires_at", TS, nullable=True),
        sa.Column("appointment_id", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index(
        "ix_waitlist_entry_queue", "waitlist_entry", ["business_id", "status", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_waitlist_entry_queue", "waitlist_entry")
    op.drop_table("waitlist_entry")
    op.drop_index("ix_inbound_sms_from", "inbound_sms")
    op.drop_table("inbound_sms")
    op.drop_table("sms_opt_out")
    op.drop_index("ix_sms_message_sid", "sms_message")
    op.drop_index("ix_sms_message_appointment", "sms_message")
    for name in ("delivery_at", "delivery_error", "delivery_status", "appointment_id", "kind"):
        op.drop_column("sms_message", name)
    op.drop_column("appointment", "attendance_at")
    op.drop_column("appointment", "attendance")
    op.drop_column("appointment", "caller_confirmed_at")
    op.drop_column("call", "channel")
    op.drop_column("service", "reminders")
    op.drop_column("business", "reminders")
    op.drop_column("business", "address")
