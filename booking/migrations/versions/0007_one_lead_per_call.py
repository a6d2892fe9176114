"""One lead per call: merge the duplicates a race left behind, then a unique index on the call.

The earliest lead of a call stays and takes in the later ones the way `Scheduler.record_lead`
would have: a `booked` outcome wins (and anything replaces `not_interested`), a later
appointment is kept, distinct reasons follow the first one, a missing name or contact is
filled in, and the owner's status is the most advanced one (new < contacted < won / lost; of
won and lost, the one set last). The duplicates' status history moves to the lead that stays.

Revision ID: 0007
Revises: 0006
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# How far an owner has taken a lead; won and lost are both the end.
_STATUS_RANK = {"new": 0, "contacted": 1, "won": 2, "lost": 2}
_COLUMNS = "id, call_id, contact_id, appointment_id, name, phone, reason, outcome, status"


def _merge(kept: dict[str, Any], later: dict[str, Any]) -> None:
    """Fold a later duplicate into the kept lead, as `record_lead` folds a later record."""
    if later["outcome"] == "booked" or kept["outcome"] == "not_interested":
        kept["outcome"] = later["outcome"]
    if later["appointment_id"]:
        kept["appointment_id"] = later["appointment_id"]
    reason = later["reason"]
    if reason and reason not in kept["reasons"]:
        kept["reasons"].append(reason)
    for field in ("name", "phone", "contact_id"):
        kept[field] = kept[field] or later[field]


def _status_key(lead: dict[str, Any]) -> tuple[int, bool, Any]:
    # Unknown statuses rank lowest; between equals the one an owner set last wins.
    at = lead["status_at"]
    return (_STATUS_RANK.get(lead["status"], -1), at is not None, at if at is not None else 0)


def upgrade() -> None:
    conn = op.get_bind()
    rows = (
        conn.execute(
            sa.text(
                f"SELECT {_COLUMNS} FROM lead WHERE call_id IN ("
                "  SELECT call_id FROM lead WHERE call_id IS NOT NULL"
                "  GROUP BY call_id HAVING count(*) > 1"
                ") ORDER BY call_id, created_at, id"
            )
        )
        .mappings()
        .all()
    )
    last_change: dict[str, Any] = dict(
        conn.execute(
            sa.text("SELECT lead_id, max(at) FROM lead_status_change GROUP BY lead_id")
        ).all()
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        lead = dict(row) | {"status_at": last_change.get(row["id"])}
        groups.setdefault(lead["call_id"], []).append(lead)
    for first, *later in groups.values():
        first["reasons"] = [first["reason"]] if first["reason"] else []
        for lead in later:
            _merge(first, lead)
        status = max([first, *later], key=_status_key)["status"]
        for lead in later:  # its history follows the lead that stays, then it goes
            conn.execute(
                sa.text("UPDATE lead_status_change SET lead_id = :keep WHERE lead_id = :id"),
                {"keep": first["id"], "id": lead["id"]},
            )
            conn.execute(sa.text("DELETE FROM lead WHERE id = :id"), {"id": lead["id"]})
        conn.execute(
            sa.text(
                "UPDATE lead SET outcome = :outcome, appointment_id = :appointment_id, "
                "reason = :reason, name = :name, phone = :phone, contact_id = :contact_id, "
                "status = :status WHERE id = :id"
            ),
            {
                "id": first["id"],
                "outcome": first["outcome"],
                "appointment_id": first["appointment_id"],
                "reason": "; then: ".join(first["reasons"]) or None,
                "name": first["name"],
                "phone": first["phone"],
                "contact_id": first["contact_id"],
                "status": status,
            },
        )
    op.create_index("uq_lead_call", "lead", ["call_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_lead_call", "lead")
