"""One lead per call: merge the duplicates a race left behind, then a unique index on the call.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, call_id FROM lead WHERE call_id IS NOT NULL ORDER BY call_id, created_at, id"
    )).all()
    kept: dict[str, str] = {}
    for lead_id, call_id in rows:
        keep = kept.setdefault(call_id, lead_id)  # the earliest lead of the call stays
        if keep == lead_id:
            continue
        # A dropped duplicate's status history follows the lead that stays.
        conn.execute(sa.text("UPDATE lead_status_change SET lead_id = :keep WHERE lead_id = :id"),
                     {"keep": keep, "id": lead_id})
        conn.execute(sa.text("DELETE FROM lead WHERE id = :id"), {"id": lead_id})
    op.create_index("uq_lead_call", "lead", ["call_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_lead_call", "lead")
