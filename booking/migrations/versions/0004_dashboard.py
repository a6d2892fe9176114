"""Dashboard accounts, browser sessions, log-in attempts, the audit log, lead status history.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dashboard_user",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "business_id", sa.String(64), sa.ForeignKey("business.id"), nullable=False, index=True
        ),
        sa.Column("email", sa.String(), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("staff_id", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_login_at", TS, nullable=True),
    )
    op.create_table(
        "dashboard_session",
        sa.Column("token_hash", sa.String(), primary_key=True),
        sa.Column(
            "user_id", sa.String(), sa.ForeignKey("dashboard_user.id"), nullable=False, index=True
        ),
        sa.Column("csrf", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_table(
        "dashboard_login_attempt",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("email", sa.String(), nullable=False),
        sa.Column("ip", sa.String(), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_login_attempt_key", "dashboard_login_attempt", ["email", "ip", "at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("business_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_audit_log_business_at", "audit_log", ["business_id", "at"])
    op.create_table(
        "lead_status_change",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("business_id", sa.String(64), nullable=False),
        sa.Column("lead_id", sa.String(), sa.ForeignKey("lead.id"), nullable=False, index=True),
        sa.Column("from_status", sa.String(), nullable=False),
        sa.Column("to_status", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=True),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lead_status_change")
    op.drop_index("ix_audit_log_business_at", "audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_login_attempt_key", "dashboard_login_attempt")
    op.drop_table("dashboard_login_attempt")
    op.drop_table("dashboard_session")
    op.drop_table("dashboard_user")
