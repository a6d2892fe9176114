"""Recurring time off: the rules refused, and expansion that matches dateutil at a bounded cost."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from dateutil.rrule import rrulestr
from hypothesis import given, settings
from hypothesis import strategies as st

from booking.recurrence import (
    MAX_INSTANCES,
    RuleRefused,
    TooManyInstances,
    _compile,
    compile_rule,
)

START = datetime(2026, 12, 4, 13, 0)


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("FREQ=MINUTELY", "FREQ=MINUTELY repeats more often than daily"),
        ("FREQ=SECONDLY;COUNT=5", "FREQ=SECONDLY repeats more often than daily"),
        ("FREQ=HOURLY;INTERVAL=1", "FREQ=HOURLY repeats more often than daily"),
        ("FREQ=DAILY;BYHOUR=9,10", "BYHOUR=9,10 repeats more often than daily"),
        ("FREQ=WEEKLY;BYMINUTE=0,1,2", "BYMINUTE=0,1,2 repeats more often than daily"),
        ("FREQ=DAILY;BYSECOND=1,2", "BYSECOND=1,2 repeats more often than daily"),
        ("FREQ=DAILY;COUNT=10001", "COUNT=10001 is more than 10000"),
        ("FREQ=DAILY;UNTIL=22000101", "UNTIL 2200-01-01T00:00:00 is outside the years 1970-2199"),
        ("FREQ=DAILY;UNTIL=19691231T235959", "outside the years 1970-2199"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20270101", "COUNT and UNTIL cannot both be given"),
        ("FREQ=MONTHLY;BYSETPOS=40;BYDAY=MO", "BYSETPOS is not supported for time off"),
        ("FREQ=WEEKLY;BYDAY=1MO", "needs FREQ=MONTHLY or YEARLY"),
        ("FREQ=MONTHLY;BYDAY=6MO", "BYDAY=6MO: the number must be 1..5"),
        ("FREQ=MONTHLY;BYDAY=MO,1FR", "mixes plain and numbered weekdays"),
        ("FREQ=DAILY;FREQ=MINUTELY", "FREQ is given twice"),
        ("DTSTART:00010101T000000\nRRULE:FREQ=DAILY", "give one RRULE"),
        ("BYDAY=MO", "FREQ is missing"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0 is outside 1..1000"),
    ],
)
def test_rules_that_could_freeze_slot_search_are_refused(rule: str, reason: str) -> None:
    with pytest.raises(RuleRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        compile_rule(rule, START)


@pytest.mark.parametrize("year", [1969, 2200, 9999])
def test_a_start_outside_1970_to_2199_is_refused(year: int) -> None:
    with pytest.raises(RuleRefused, match="outside the years 1970-2199"):
        compile_rule("FREQ=WEEKLY", START.replace(year=year))


def test_a_rule_that_never_matches_costs_only_its_window() -> None:
    # dateutil walks this one day by day to the year 9999: about 8 s for every search.
    rule = compile_rule("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30", datetime(1970, 1, 1))
    t0 = time.perf_counter()
    assert rule.between(datetime(2026, 12, 1), datetime(2026, 12, 15)) == []
    assert time.perf_counter() - t0 < 0.05


def test_an_old_daily_rule_starts_at_the_window() -> None:
    rule = compile_rule("FREQ=DAILY", datetime(1970, 1, 1, 12))
    got = rule.between(datetime(2199, 12, 1), datetime(2199, 12, 3, 23))
    assert got == [datetime(2199, 12, d, 12) for d in (1, 2, 3)]


def test_an_expansion_past_the_day_budget_is_refused() -> None:
    rule = compile_rule("FREQ=DAILY", datetime(1970, 1, 1))
    with pytest.raises(TooManyInstances):
        rule.between(datetime(1970, 1, 1), datetime(1970, 1, 1) + timedelta(days=MAX_INSTANCES))


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;COUNT=10000",
        "FREQ=WEEKLY;INTERVAL=2;BYDAY=FR;COUNT=300",
        "FREQ=MONTHLY;BYDAY=-1FR;COUNT=40",
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;COUNT=5",
        "RRULE:FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20300101T120000",
    ],
)
def test_long_rules_match_dateutil_far_from_their_start(rule: str) -> None:
    start = datetime(1999, 3, 5, 13, 0)
    lo, hi = datetime(2026, 2, 1), datetime(2026, 4, 30)
    expected = rrulestr(rule, dtstart=start).between(lo, hi, inc=True)
    assert compile_rule(rule, start).between(lo, hi) == expected


# -- the same instances as dateutil, for any accepted rule ------------------------------------

_DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]


@st.composite
def rules(draw: st.DrawFn) -> str:
    freq = draw(st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    parts = [f"FREQ={freq}"]
    if draw(st.booleans()):
        parts.append(f"INTERVAL={draw(st.integers(1, 13))}")
    if draw(st.booleans()):
        months = draw(st.sets(st.integers(1, 12), min_size=1, max_size=3))
        parts.append("BYMONTH=" + ",".join(map(str, sorted(months))))
    if draw(st.booleans()):
        days = draw(st.sets(st.integers(-31, 31).filter(bool), min_size=1, max_size=3))
        parts.append("BYMONTHDAY=" + ",".join(map(str, sorted(days))))
    if draw(st.booleans()):
        names = draw(st.sets(st.sampled_from(_DAYS), min_size=1, max_size=3))
        if freq in ("MONTHLY", "YEARLY") and draw(st.booleans()):
            top = 5 if freq == "MONTHLY" or any(p.startswith("BYMONTH=") for p in parts) else 53
            n = draw(st.integers(-top, top).filter(bool))
            parts.append("BYDAY=" + ",".join(f"{n}{d}" for d in sorted(names)))
        else:
            parts.append("BYDAY=" + ",".join(sorted(names)))
    if draw(st.booleans()):
        parts.append(f"BYHOUR={draw(st.integers(0, 23))}")
    if draw(st.booleans()):
        parts.append(f"WKST={draw(st.sampled_from(_DAYS))}")
    if draw(st.booleans()):
        parts.append(f"COUNT={draw(st.integers(1, 40))}")
    return ";".join(parts)


@settings(max_examples=200, deadline=None)
@given(
    rule=rules(),
    offset=st.integers(0, 3 * 365),
    start_hour=st.integers(0, 23),
    span=st.integers(1, 120),
    skip=st.integers(0, 2 * 365),
)
def test_expansion_matches_dateutil(
    rule: str, offset: int, start_hour: int, span: int, skip: int
) -> None:
    start = datetime(1993, 1, 1, start_hour, 30) + timedelta(days=offset)
    lo = start + timedelta(days=skip)
    hi = lo + timedelta(days=span)
    ours = compile_rule(rule, start).between(lo, hi)
    # dateutil 8,000 years later (whole 400-year cycles: the same weekdays and leap years), so
    # that it stops soon after the window even for a rule that never matches: it walks such a
    # rule to the year 9999.
    shift = 8000
    theirs = rrulestr(rule, dtstart=start.replace(year=start.year + shift)).between(
        lo.replace(year=lo.year + shift), hi.replace(year=hi.year + shift), inc=True
    )
    assert ours == [d.replace(year=d.year - shift) for d in theirs], rule


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=WEEKLY;COUNT=10000",
        "FREQ=DAILY;BYMONTHDAY=1,-1;COUNT=2500",
        "FREQ=DAILY;INTERVAL=3;BYDAY=MO,FR;COUNT=4000",
        "FREQ=WEEKLY;INTERVAL=5;BYDAY=TU,SU;WKST=SU;COUNT=3000",
        "FREQ=MONTHLY;BYDAY=1MO,2MO,3MO,4MO,5MO,-1MO;COUNT=10000",
        "FREQ=MONTHLY;INTERVAL=7;BYMONTHDAY=31;COUNT=200",
        "FREQ=YEARLY;BYDAY=20TH,-3SA;COUNT=400",
        "FREQ=YEARLY;BYMONTH=2,8;BYDAY=-1FR;BYHOUR=9;COUNT=300",
        "FREQ=DAILY;BYHOUR=8;COUNT=10000",  # before DTSTART's time: DTSTART's day is not one
    ],
)
def test_a_large_count_ends_where_dateutil_ends_it(rule: str) -> None:
    start = datetime(1971, 3, 5, 13, 0)
    assert compile_rule(rule, start).until == list(rrulestr(rule, dtstart=start))[-1]


def test_a_count_rule_that_never_reaches_its_count_compiles_quickly() -> None:
    # Was 0.5 s: the COUNT was found by testing every day from 1970 to the end of 2199.
    rule = "FREQ=YEARLY;BYDAY=53MO,53TU,53WE,53TH,53FR,53SA,53SU;COUNT=10000"
    _compile.cache_clear()
    t0 = time.perf_counter()
    compiled = compile_rule(rule, datetime(1970, 1, 5, 12))
    assert time.perf_counter() - t0 < 0.1
    got = compiled.between(datetime(2026, 12, 1), datetime(2027, 1, 31))
    expected = rrulestr(rule, dtstart=datetime(1970, 1, 5, 12)).between(
        datetime(2026, 12, 1), datetime(2027, 1, 31), inc=True
    )
    assert got == expected
