"""Slot search rules: hours, overrides, time off, buffers, notice, horizon, DST, zones."""

from __future__ import annotations

import time as _time
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from booking.rules import Availability, parse_range
from booking.slots import (
    ServiceSpec,
    Slot,
    StaffSpec,
    filter_time_of_day,
    find_options,
    find_slots,
    spread,
)

NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
CHICAGO = ZoneInfo("America/Chicago")
EVERY_DAY = {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


def svc(minutes: int = 45, step: int = 15, **kw: object) -> ServiceSpec:
    return ServiceSpec(
        id="s",
        duration=timedelta(minutes=minutes),
        slot_step=timedelta(minutes=step),
        max_days_ahead=kw.pop("ahead", 400),
        **kw,
    )  # type: ignore[arg-type]


def staff(tz: ZoneInfo = NY, sid: str = "lee", **rules: object) -> StaffSpec:
    rules.setdefault("weekly_hours", EVERY_DAY)
    return StaffSpec(id=sid, tz=tz, availability=Availability.model_validate(rules))


def local(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz)  # type: ignore[misc]


def search(
    service: ServiceSpec,
    members: list[StaffSpec],
    first: date,
    last: date,
    tz: ZoneInfo = NY,
    now: datetime = LONG_AGO,
    busy: dict | None = None,
) -> list[Slot]:
    start = datetime.combine(first, time(), tz)
    end = datetime.combine(last + timedelta(days=1), time(), tz)
    return find_slots(service=service, staff=members, start=start, end=end, now=now, busy=busy)


def starts_by_day(slots: list[Slot], tz: ZoneInfo) -> dict[date, list[str]]:
    out: dict[date, list[str]] = {}
    for s in slots:
        loc = s.start.astimezone(tz)
        out.setdefault(loc.date(), []).append(loc.strftime("%H:%M"))
    return out


def test_nine_stays_nine_across_new_york_spring_forward() -> None:
    slots = search(svc(), [staff()], date(2026, 3, 7), date(2026, 3, 9))
    days = starts_by_day(slots, NY)
    for day in (date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9)):
        assert days[day][0] == "09:00"
        assert days[day][-1] == "16:15"
        assert len(days[day]) == 30
    firsts = [s.start for s in slots if s.start.astimezone(NY).strftime("%H:%M") == "09:00"]
    assert [f.hour for f in firsts] == [14, 13, 13]  # EST then EDT, in UTC


def test_nine_stays_nine_across_new_york_fall_back() -> None:
    slots = search(svc(), [staff()], date(2026, 10, 31), date(2026, 11, 2))
    firsts = [s.start for s in slots if s.start.astimezone(NY).strftime("%H:%M") == "09:00"]
    assert [f.hour for f in firsts] == [13, 14, 14]


def test_london_dst_weeks_keep_local_hours() -> None:
    member = staff(tz=LONDON)
    spring = search(svc(), [member], date(2026, 3, 28), date(2026, 3, 30), tz=LONDON)
    autumn = search(svc(), [member], date(2026, 10, 24), date(2026, 10, 26), tz=LONDON)
    for slots, hours in ((spring, [9, 8, 8]), (autumn, [8, 9, 9])):
        days = starts_by_day(slots, LONDON)
        assert all(v[0] == "09:00" and v[-1] == "16:15" for v in days.values())
        firsts = [s.start for s in slots if s.start.astimezone(LONDON).strftime("%H:%M") == "09:00"]
        assert [f.hour for f in firsts] == hours


def test_nonexistent_local_times_are_skipped_and_steps_are_elapsed_time() -> None:
    night = staff(weekly_hours={"sun": ["01:00-04:00"]})
    slots = search(svc(minutes=30, step=30), [night], date(2026, 3, 8), date(2026, 3, 8))
    assert [s.start.astimezone(NY).strftime("%H:%M") for s in slots] == [
        "01:00",
        "01:30",
        "03:00",
        "03:30",
    ]


def test_ambiguous_fall_back_hour_is_offered_twice_in_elapsed_time() -> None:
    night = staff(weekly_hours={"sun": ["00:00-03:00"]})
    slots = search(svc(minutes=60, step=60), [night], date(2026, 11, 1), date(2026, 11, 1))
    # 00:00 to 03:00 local is four hours of elapsed time on the fall-back night.
    assert len(slots) == 4
    assert [s.start.astimezone(NY).strftime("%H:%M%z") for s in slots] == [
        "00:00-0400",
        "01:00-0400",
        "01:00-0500",
        "02:00-0500",
    ]


def test_slot_must_fit_wholly_inside_each_range() -> None:
    split = staff(weekly_hours={"mon": ["09:00-12:00", "13:00-17:00"]})
    days = starts_by_day(search(svc(), [split], date(2026, 12, 7), date(2026, 12, 7)), NY)
    assert "11:15" in days[date(2026, 12, 7)] and "11:30" not in days[date(2026, 12, 7)]
    assert "12:00" not in days[date(2026, 12, 7)] and "13:00" in days[date(2026, 12, 7)]


def test_override_closes_a_date_and_replaces_hours() -> None:
    member = staff(
        overrides=[
            {"date": "2026-12-24", "hours": []},
            {"date": "2026-12-27", "hours": ["10:00-14:00"]},
        ]
    )
    days = starts_by_day(search(svc(), [member], date(2026, 12, 23), date(2026, 12, 27)), NY)
    assert date(2026, 12, 24) not in days
    assert days[date(2026, 12, 27)][0] == "10:00" and days[date(2026, 12, 27)][-1] == "13:15"
    assert days[date(2026, 12, 23)][0] == "09:00"


def test_time_off_range_and_biweekly_recurring_afternoons() -> None:
    member = staff(
        time_off=[
            {"start": "2026-12-28T00:00", "end": "2027-01-02T00:00"},
            {
                "rrule": "FREQ=WEEKLY;INTERVAL=2;BYDAY=FR",
                "start": "2026-12-04T13:00",
                "end": "2026-12-04T17:00",
            },
        ]
    )
    days = starts_by_day(search(svc(), [member], date(2026, 12, 4), date(2027, 1, 2)), NY)
    assert days[date(2026, 12, 4)][-1] == "12:15"  # 12:15-13:00 touches 13:00
    assert days[date(2026, 12, 11)][-1] == "16:15"  # off week
    assert days[date(2026, 12, 18)][-1] == "12:15"
    assert not any(date(2026, 12, 28) <= d <= date(2027, 1, 1) for d in days)
    assert date(2027, 1, 2) in days


def test_recurring_time_off_keeps_wall_time_across_dst() -> None:
    member = staff(
        time_off=[
            {
                "rrule": "FREQ=WEEKLY;BYDAY=SU",
                "start": "2026-03-01T09:00",
                "end": "2026-03-01T12:00",
            }
        ]
    )
    days = starts_by_day(search(svc(), [member], date(2026, 3, 1), date(2026, 3, 15)), NY)
    for sunday in (date(2026, 3, 1), date(2026, 3, 8), date(2026, 3, 15)):
        assert days[sunday][0] == "12:00"


def test_buffers_widen_the_slot_against_busy_time() -> None:
    service = svc(buffer_before=timedelta(minutes=10), buffer_after=timedelta(minutes=15))
    busy = {"lee": [(local(NY, 2026, 12, 7, 11, 0), local(NY, 2026, 12, 7, 12, 0))]}
    day = starts_by_day(
        search(service, [staff()], date(2026, 12, 7), date(2026, 12, 7), busy=busy), NY
    )[date(2026, 12, 7)]
    assert "10:00" in day  # 09:50 .. 11:00 touches, does not overlap
    assert "10:15" not in day  # its after-buffer runs into 11:00
    assert "12:00" not in day  # its before-buffer starts at 11:50
    assert "12:15" in day


def test_buffers_may_fall_outside_working_hours() -> None:
    service = svc(buffer_before=timedelta(minutes=30), buffer_after=timedelta(minutes=30))
    day = starts_by_day(search(service, [staff()], date(2026, 12, 7), date(2026, 12, 7)), NY)[
        date(2026, 12, 7)
    ]
    assert day[0] == "09:00" and day[-1] == "16:15"


def test_minimum_notice_and_horizon() -> None:
    now = local(NY, 2026, 12, 7, 9, 5)
    service = svc(min_notice=timedelta(minutes=120), ahead=2)
    slots = search(service, [staff()], date(2026, 12, 7), date(2026, 12, 12), now=now)
    assert slots[0].start == local(NY, 2026, 12, 7, 11, 15)
    assert max(s.start for s in slots) < now + timedelta(days=2)
    assert min(s.start for s in slots) >= now + timedelta(minutes=120)


def test_every_staff_member_who_does_it_in_their_own_zone() -> None:
    lee = staff(weekly_hours={"mon": ["09:00-10:00"]})
    rivera = staff(tz=CHICAGO, sid="rivera", weekly_hours={"mon": ["08:00-09:00"]})
    slots = search(svc(minutes=60, step=60), [lee, rivera], date(2026, 12, 7), date(2026, 12, 7))
    assert [(s.staff_id, s.start.astimezone(NY).hour) for s in slots] == [("lee", 9), ("rivera", 9)]


def test_staff_zone_hours_that_cross_the_business_date_line() -> None:
    # 20:00-23:00 in Los Angeles is 23:00-02:00 in New York: the window is the business's dates.
    la = staff(tz=ZoneInfo("America/Los_Angeles"), weekly_hours={"mon": ["20:00-23:00"]})
    slots = search(svc(minutes=60, step=60), [la], date(2026, 12, 7), date(2026, 12, 7))
    assert [s.start.astimezone(NY).strftime("%H:%M") for s in slots] == ["23:00"]


def test_time_of_day_filter_and_spread() -> None:
    slots = search(svc(), [staff()], date(2026, 12, 7), date(2026, 12, 9))
    afternoon = filter_time_of_day(slots, NY, earliest=time(13), latest=time(15))
    assert afternoon and all(
        time(13) <= s.start.astimezone(NY).time() <= time(15) for s in afternoon
    )
    picks = spread(slots, 4)
    assert len(picks) == 4 and picks == sorted(picks)
    assert picks[0] == slots[0] and picks[-1] == slots[-1]
    assert len({p.start.date() for p in picks}) >= 3


# ---- properties ------------------------------------------------------------------------------

minutes_of_day = st.integers(min_value=0, max_value=23 * 60 + 45).map(lambda m: m - m % 15)


@st.composite
def day_ranges(draw: st.DrawFn) -> list[str]:
    points = sorted(draw(st.sets(minutes_of_day, min_size=0, max_size=6)))
    if len(points) % 2:
        points = points[:-1]
    return [
        f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"
        for a, b in zip(points[::2], points[1::2], strict=True)
    ]


@st.composite
def busy_lists(draw: st.DrawFn, base: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    for _ in range(draw(st.integers(0, 25))):
        start = base + timedelta(minutes=draw(st.integers(0, 10 * 24 * 60)))
        out.append((start, start + timedelta(minutes=draw(st.integers(1, 240)))))
    return out


@settings(max_examples=150, deadline=None)
@given(
    tz=st.sampled_from([NY, LONDON, CHICAGO, ZoneInfo("Australia/Lord_Howe")]),
    hours=st.lists(day_ranges(), min_size=7, max_size=7),
    duration=st.sampled_from([15, 30, 45, 60, 90]),
    step=st.sampled_from([10, 15, 30, 60]),
    before=st.sampled_from([0, 5, 15]),
    after=st.sampled_from([0, 10, 15]),
    notice=st.sampled_from([0, 60, 24 * 60]),
    ahead=st.integers(1, 9),
    offset_days=st.integers(0, 300),
    busy=busy_lists(datetime(2026, 1, 1, tzinfo=UTC)),
)
def test_no_slot_ever_breaks_a_rule(
    tz, hours, duration, step, before, after, notice, ahead, offset_days, busy
) -> None:  # type: ignore[no-untyped-def]
    weekly = dict(zip(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), hours, strict=True))
    member = StaffSpec(
        id="x", tz=tz, availability=Availability.model_validate({"weekly_hours": weekly})
    )
    service = ServiceSpec(
        id="s",
        duration=timedelta(minutes=duration),
        slot_step=timedelta(minutes=step),
        buffer_before=timedelta(minutes=before),
        buffer_after=timedelta(minutes=after),
        min_notice=timedelta(minutes=notice),
        max_days_ahead=ahead,
    )
    base = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=offset_days)
    busy = [(s + timedelta(days=offset_days), e + timedelta(days=offset_days)) for s, e in busy]
    now = base + timedelta(hours=7, minutes=13)
    start, end = base, base + timedelta(days=10)
    slots = find_slots(
        service=service, staff=[member], start=start, end=end, now=now, busy={"x": busy}
    )

    for slot in slots:
        assert start <= slot.start < end
        assert slot.start >= now + service.min_notice
        assert slot.start < now + timedelta(days=ahead)
        block_start, block_end = service.block(slot.start)
        assert all(not (b_start < block_end and b_end > block_start) for b_start, b_end in busy)
        assert _inside_a_range_on_the_grid(slot, member, service)

    # Completeness: every candidate the rules allow is offered.
    expected = set()
    for day_offset in range(-1, 12):
        day = (base + timedelta(days=day_offset)).astimezone(tz).date()
        for text in weekly[("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()]]:
            a, b = parse_range(text)
            rs = _wall(day, a, tz)
            re_ = _wall(day, b, tz)
            t = rs
            while t + service.duration <= re_:
                bs, be = service.block(t)
                if (
                    start <= t < end
                    and t >= now + service.min_notice
                    and t < now + timedelta(days=ahead)
                    and not any(x < be and y > bs for x, y in busy)
                ):
                    expected.add(t)
                t += service.slot_step
    assert {s.start for s in slots} == expected


@st.composite
def team(draw: st.DrawFn) -> list[StaffSpec]:
    """One to six staff members: their own zones, hours (some shared), time off."""
    members = []
    shared = draw(st.lists(day_ranges(), min_size=7, max_size=7))
    for n in range(draw(st.integers(1, 6))):
        hours = (
            shared if draw(st.booleans()) else draw(st.lists(day_ranges(), min_size=7, max_size=7))
        )
        rules: dict[str, object] = {
            "weekly_hours": dict(
                zip(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), hours, strict=True)
            )
        }
        if draw(st.booleans()):
            rules["time_off"] = [
                {"start": "2026-03-02T12:00", "end": "2026-03-03T10:00"},
                {
                    "rrule": "FREQ=WEEKLY;BYDAY=WE",
                    "start": "2026-01-07T13:00",
                    "end": "2026-01-07T15:00",
                },
            ]
        tz = draw(st.sampled_from([NY, LONDON, CHICAGO]))
        # Ids out of order, so "the first staff member free" is by id, not by position.
        members.append(
            StaffSpec(id=f"m{5 - n}", tz=tz, availability=Availability.model_validate(rules))
        )
    return members


@settings(max_examples=200, deadline=None)
@given(
    members=team(),
    duration=st.sampled_from([15, 30, 45, 60]),
    step=st.sampled_from([10, 15, 30]),
    before=st.sampled_from([0, 5, 15]),
    after=st.sampled_from([0, 10]),
    notice=st.sampled_from([0, 60, 24 * 60]),
    days=st.integers(1, 4),
    count=st.integers(0, 7),
    earliest=st.one_of(st.none(), st.sampled_from([time(8), time(9, 30), time(13)])),
    latest=st.one_of(st.none(), st.sampled_from([time(11), time(12, 15), time(17)])),
    busy=busy_lists(datetime(2026, 3, 1, tzinfo=UTC)),
    assign=st.lists(st.integers(0, 5), min_size=25, max_size=25),
)
def test_the_agent_search_returns_exactly_what_the_full_search_spreads(
    members, duration, step, before, after, notice, days, count, earliest, latest, busy, assign
) -> None:  # type: ignore[no-untyped-def]
    service = ServiceSpec(
        id="s",
        duration=timedelta(minutes=duration),
        slot_step=timedelta(minutes=step),
        buffer_before=timedelta(minutes=before),
        buffer_after=timedelta(minutes=after),
        min_notice=timedelta(minutes=notice),
        max_days_ahead=30,
    )
    by_member: dict[str, list[tuple[datetime, datetime]]] = {}
    for interval, n in zip(busy, assign, strict=False):  # each busy interval to one member
        by_member.setdefault(members[n % len(members)].id, []).append(interval)
    # Around spring forward in New York (March 8) and in London (March 29) on some draws.
    start = datetime(2026, 3, 6, tzinfo=NY)
    end = start + timedelta(days=days)
    now = datetime(2026, 3, 6, 7, 13, tzinfo=NY)
    window = {"service": service, "staff": members, "start": start, "end": end, "now": now}
    every = find_slots(**window, busy=by_member)  # type: ignore[arg-type]
    expected = spread(filter_time_of_day(every, NY, earliest=earliest, latest=latest), count)
    got = find_options(
        **window,
        busy=by_member,
        count=count,
        tz=NY,
        earliest=earliest,
        latest=latest,  # type: ignore[arg-type]
    )
    assert got == expected


def test_the_agent_search_takes_the_first_free_member_by_id_across_shifts() -> None:
    """Staff on two shifts: at 9:00 "a" is busy, so the option is "b" (the other shift), not
    "c" (who shares a's shift but comes after b)."""
    day = {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}
    morning = {d: ["09:00-12:00"] for d in ("mon", "tue", "wed", "thu", "fri")}
    members = [staff(sid="c", weekly_hours=day), staff(sid="a", weekly_hours=day)]
    members.append(staff(sid="b", weekly_hours=morning))
    nine = local(NY, 2026, 3, 4, 9, 0)
    window = {
        "service": svc(minutes=30, step=30),
        "staff": members,
        "start": local(NY, 2026, 3, 4),
        "end": local(NY, 2026, 3, 4, 10, 0),
        "now": LONG_AGO,
        "busy": {"a": [(nine, nine + timedelta(minutes=30))]},
    }
    got = find_options(**window, count=2)  # type: ignore[arg-type]
    assert [(s.start, s.staff_id) for s in got] == [
        (nine, "b"),
        (nine + timedelta(minutes=30), "a"),
    ]
    assert got == spread(find_slots(**window), 2)  # type: ignore[arg-type]


def test_the_agent_search_needs_a_zone_for_a_time_of_day() -> None:
    with pytest.raises(ValueError, match="zone"):
        find_options(
            service=svc(),
            staff=[staff()],
            start=datetime(2026, 3, 6, tzinfo=NY),
            end=datetime(2026, 3, 7, tzinfo=NY),
            now=LONG_AGO,
            count=3,
            earliest=time(9),
        )


def _wall(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    extra, minutes = divmod(minutes, 1440)
    wall = datetime.combine(day + timedelta(days=extra), time(minutes // 60, minutes % 60))
    return wall.replace(tzinfo=tz).astimezone(UTC)


def _inside_a_range_on_the_grid(slot: Slot, member: StaffSpec, service: ServiceSpec) -> bool:
    local_day = slot.start.astimezone(member.tz).date()
    for day in (local_day - timedelta(days=1), local_day):
        for text in member.availability.hours_on(day):
            a, b = parse_range(text)
            rs, re_ = _wall(day, a, member.tz), _wall(day, b, member.tz)
            offset = (slot.start - rs) / service.slot_step
            if rs <= slot.start and slot.end <= re_ and offset == int(offset):
                return True
    return False


# ---- hostile input: stored rules past today's limits, and the edges of the calendar ---------


def stored_staff(**rules: object) -> StaffSpec:
    """A staff member whose rules come back from the database, validated as stored."""
    from booking.rules import STORED

    rules.setdefault("weekly_hours", EVERY_DAY)
    return StaffSpec(
        id="lee", tz=NY, availability=Availability.model_validate(rules, context=STORED)
    )


def test_a_stored_minutely_rule_is_busy_time_not_millions_of_instances(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Saved before the limits existed: expanding it would walk every minute since 2000.
    from booking import rules

    rules._refused.cache_clear()  # it warns once per process; another test may have warned
    member = stored_staff(
        time_off=[
            {"rrule": "FREQ=MINUTELY", "start": "2000-01-01T00:00", "end": "2000-01-01T00:01"}
        ]
    )
    t0 = _time.perf_counter()
    assert search(svc(), [member], date(2026, 12, 7), date(2026, 12, 20)) == []
    assert _time.perf_counter() - t0 < 0.5
    assert "is not expanded" in caplog.text
    clean = search(svc(), [staff()], date(2026, 12, 7), date(2026, 12, 20))
    assert len(clean) == 14 * 30


def test_a_stored_rule_from_the_year_one_is_busy_time() -> None:
    member = stored_staff(
        time_off=[
            {
                "rrule": "FREQ=DAILY",
                "start": "0001-01-01T00:00+09:00",
                "end": "0001-01-01T01:00+09:00",
            },
            {"start": "0001-01-01T00:00+09:00", "end": "9999-12-31T23:00-05:00"},
        ]
    )
    assert search(svc(), [member], date(2026, 12, 7), date(2026, 12, 8)) == []


def test_a_rule_that_never_matches_costs_nothing() -> None:
    member = staff(
        time_off=[
            {
                "rrule": "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
                "start": "1970-01-01T09:00",
                "end": "1970-01-01T10:00",
            }
        ]
    )
    t0 = _time.perf_counter()
    assert len(search(svc(), [member], date(2026, 12, 7), date(2026, 12, 7))) == 30
    assert _time.perf_counter() - t0 < 0.5  # dateutil: about 8 s


def test_the_edges_of_the_calendar_give_no_slots_and_no_overflow() -> None:
    end_of_time = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    start_of_time = datetime(1, 1, 1, tzinfo=UTC)
    members = [staff(), staff(tz=ZoneInfo("Pacific/Kiritimati"), sid="kiri")]
    assert (
        find_slots(
            service=svc(), staff=members, start=start_of_time, end=end_of_time, now=end_of_time
        )
        == []
    )
    huge = svc(ahead=10**9, min_notice=timedelta(days=10**6))
    assert (
        find_slots(
            service=huge, staff=members, start=start_of_time, end=end_of_time, now=start_of_time
        )
        == []
    )
    far = svc(ahead=10**9)
    found = find_slots(
        service=far,
        staff=members,
        start=datetime(2199, 12, 30, tzinfo=UTC),
        end=end_of_time,
        now=LONG_AGO,
    )
    assert found and found[-1].start < datetime(2200, 1, 1, tzinfo=UTC)
