"""Job leases and row claims (`booking.claims`) on SQLite and PostgreSQL: one holder at a time, a
dead owner's lease and claims taken over once they lapse, two processes racing for one lease."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from sqlalchemy.engine import Engine

from booking import claims
from booking.db import session_scope
from booking.models import SmsMessage
from booking.sms_outbox import TABLE
from tests.conftest import NOW

TTL = timedelta(seconds=30)


def hold(engine: Engine, owner: str, *, at: timedelta = timedelta(0)) -> bool:
    with session_scope(engine, write=True) as s:
        return claims.hold_lease(s, "job", owner=owner, now=NOW + at, ttl=TTL)


def test_one_owner_holds_a_lease_and_renews_it(engine: Engine) -> None:
    assert hold(engine, "a")
    assert not hold(engine, "b")
    assert hold(engine, "a", at=timedelta(seconds=20))  # renewed to 50 s
    assert not hold(engine, "b", at=timedelta(seconds=40))
    with session_scope(engine) as s:
        assert claims.lease_holder(s, "job", now=NOW + timedelta(seconds=40)) == "a"


def test_a_dead_owners_lease_is_taken_over_after_it_expires(engine: Engine) -> None:
    assert hold(engine, "dead")
    assert not hold(engine, "b", at=timedelta(seconds=29))
    assert hold(engine, "b", at=timedelta(seconds=31))
    assert not hold(engine, "dead", at=timedelta(seconds=32))  # back from the dead: too late


def test_a_released_lease_is_free_at_once(engine: Engine) -> None:
    assert hold(engine, "a")
    with session_scope(engine, write=True) as s:
        assert not claims.release_lease(s, "job", owner="b")
        assert claims.release_lease(s, "job", owner="a")
    assert hold(engine, "b")


RACER = """
import sys
from datetime import UTC, datetime, timedelta
from booking import claims
from booking.db import make_engine, session_scope
engine = make_engine(sys.argv[1])
now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
wins = 0
for _ in range(30):
    with session_scope(engine, write=True) as s:
        wins += claims.hold_lease(s, "race", owner=sys.argv[2], now=now, ttl=timedelta(hours=1))
print(wins)
"""


def test_two_processes_racing_for_one_lease_one_wins(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, url, name], stdout=subprocess.PIPE)
        for name in ("p1", "p2")
    ]
    wins = [int(p.communicate(timeout=60)[0]) for p in racers]
    assert sorted(wins) == [0, 30]  # the winner renews; the other never gets it


def seed_texts(engine: Engine, count: int) -> None:
    with session_scope(engine, write=True) as s:
        for n in range(count):
            s.add(
                SmsMessage(
                    business_id="clinic",
                    key=f"k{n}",
                    to_number="+1",
                    from_number="+2",
                    body="b",
                    next_attempt_at=NOW,
                    created_at=NOW,
                )
            )


def claim(engine: Engine, *, limit: int, at: timedelta = timedelta(0)) -> tuple[str, list[str]]:
    with session_scope(engine, write=True) as s:
        return claims.claim_rows(
            s, TABLE, where=[], now=NOW + at, lease=TTL, limit=limit, order_by=[TABLE.c.key]
        )


def test_row_claims_are_disjoint_and_lapse_after_their_lease(clinic: Engine) -> None:
    seed_texts(clinic, 5)
    _, first = claim(clinic, limit=3)
    _, second = claim(clinic, limit=3)
    assert len(first) == 3 and len(second) == 2 and not set(first) & set(second)
    assert claim(clinic, limit=3)[1] == []
    lapsed = claim(clinic, limit=10, at=TTL + timedelta(seconds=1))[1]
    assert sorted(lapsed) == sorted(first + second)


def test_a_released_row_is_claimable_again_and_only_its_holder_releases(clinic: Engine) -> None:
    seed_texts(clinic, 2)
    token, ids = claim(clinic, limit=2)
    with session_scope(clinic, write=True) as s:
        assert claims.release_rows(s, TABLE, ids, token="not-mine") == 0
        assert claims.release_rows(s, TABLE, ids[:1], token=token) == 1
    assert claim(clinic, limit=2)[1] == ids[:1]
