"""Slot search: the one function every caller (agent tool, API, CLI, booking re-check) shares.

The rules, exactly:
- Candidates start at the start of each working range in the staff member's zone, then every slot
  step after it in elapsed time; a slot fits when its whole duration lies inside the range.
- An override replaces that date's weekly hours; an empty list closes the date. Time off is busy.
- Busy time must not overlap the slot widened by the service's buffers; buffers may fall outside
  working hours. (Appointments and holds are stored as busy over their own buffered block.)
- Minimum notice: start >= now + notice. Horizon: start < now + max_days_ahead days.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from heapq import merge
from zoneinfo import ZoneInfo

from booking.rules import Availability, Interval, time_off_intervals, working_ranges

# The longest a booking's buffered block may be; lets busy queries bound their index scan.
MAX_BLOCK = timedelta(days=1)
# Slot search works inside these instants (the years 1970-2199), so no arithmetic on a window
# or on `now` can overflow, whatever a caller passes in.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ServiceSpec:
    """What slot search needs of a service."""

    id: str
    duration: timedelta
    slot_step: timedelta
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    min_notice: timedelta = timedelta(0)
    max_days_ahead: int = 60
    staff_ids: tuple[str, ...] = ()

    def block(self, start: datetime) -> Interval:
        """The time a booking at `start` keeps busy: the slot widened by its buffers."""
        return start - self.buffer_before, start + self.duration + self.buffer_after

    def reach(self, start: datetime, end: datetime) -> Interval:
        """What busy time can matter to slots starting in `[start, end)`: their blocks' span."""
        return self.block(start)[0], self.block(end)[1]


@dataclass(frozen=True)
class StaffSpec:
    """What slot search needs of a staff member."""

    id: str
    tz: ZoneInfo
    availability: Availability = field(default_factory=Availability)


@dataclass(frozen=True, order=True)
class Slot:
    start: datetime
    end: datetime
    staff_id: str


class _BusyIndex:
    """Merged busy intervals as epoch seconds (sorted starts and ends, for bisecting)."""

    def __init__(self, intervals: Iterable[Interval], *, lo: datetime, hi: datetime) -> None:
        # Compare datetimes first: converting only the window's intervals is the cheap path
        # when a caller hands in a year of busy time.
        spans = sorted((s.timestamp(), e.timestamp()) for s, e in intervals if e > lo and s < hi)
        starts: list[float] = []
        ends: list[float] = []
        for s, e in spans:
            if ends and s <= ends[-1]:
                ends[-1] = max(ends[-1], e)
            else:
                starts.append(s)
                ends.append(e)
        self.starts, self.ends = starts, ends

    def free(self, t: float, before: float, after_end: float) -> bool:
        """Whether nothing is busy from `t - before` to `t + after_end` (epoch seconds)."""
        i = bisect_right(self.ends, t - before)
        return i == len(self.starts) or self.starts[i] >= t + after_end


def find_slots(
    *,
    service: ServiceSpec,
    staff: Sequence[StaffSpec],
    start: datetime,
    end: datetime,
    now: datetime,
    busy: Mapping[str, Iterable[Interval]] | None = None,
) -> list[Slot]:
    """Every bookable slot starting in `[start, end)`, for each of `staff`, sorted by time."""
    window = _window(service, start, end, now)
    if window is None:
        return []
    lo, hi = window
    slots: list[Slot] = []
    for member in staff:
        slots.extend(_staff_slots(service, member, lo, hi, (busy or {}).get(member.id, ())))
    slots.sort(key=_slot_order)
    return slots


def find_options(
    *,
    service: ServiceSpec,
    staff: Sequence[StaffSpec],
    start: datetime,
    end: datetime,
    now: datetime,
    count: int,
    busy: Mapping[str, Iterable[Interval]] | None = None,
    tz: ZoneInfo | None = None,
    earliest: time | None = None,
    latest: time | None = None,
) -> list[Slot]:
    """`count` well-spread options: exactly `spread(filter_time_of_day(find_slots(...), tz,
    earliest=..., latest=...), count)`, without building every staff member's every slot.

    The options are distinct start times, each with the first staff member (by id) free then,
    so the work is the window's candidate times, each checked against staff members in id order
    until one is free; a member's time off and busy index are built only when first checked.
    """
    if (earliest is not None or latest is not None) and tz is None:
        raise ValueError("a time-of-day filter needs the zone it is in")
    window = _window(service, start, end, now)
    if window is None or count <= 0:
        return []
    lo, hi = window
    members = sorted(staff, key=lambda m: m.id)
    # Staff with the same hours in the same zone share one grid of candidate times: a team
    # of 200 on two shifts walks two grids, not 200.
    groups: dict[tuple[object, ...], list[int]] = {}
    for n, member in enumerate(members):
        groups.setdefault(_hours_key(member, lo, hi), []).append(n)
    teams = list(groups.values())
    candidates: dict[float, list[int]] = {}
    for g, team in enumerate(teams):
        for t in dict.fromkeys(_grid(service, members[team[0]], lo, hi)):
            candidates.setdefault(t, []).append(g)
    times = sorted(candidates)
    if tz is not None and (earliest is not None or latest is not None):
        times = [t for t in times if _within(_local_time(t, tz), earliest, latest)]
    before = service.buffer_before.total_seconds()
    after_end = (service.duration + service.buffer_after).total_seconds()
    indexes: dict[int, _BusyIndex] = {}
    options: list[Slot] = []
    for t in times:
        present = candidates[t]
        # Members free at `t` are tried in id order (member indices are), across the teams.
        who = teams[present[0]] if len(present) == 1 else merge(*(teams[g] for g in present))
        for n in who:
            index = indexes.get(n)
            if index is None:
                member = members[n]
                index = _member_busy(service, member, lo, hi, (busy or {}).get(member.id, ()))
                indexes[n] = index
            if index.free(t, before, after_end):
                slot_start = datetime.fromtimestamp(t, UTC)
                options.append(Slot(slot_start, slot_start + service.duration, members[n].id))
                break
    return spread(options, count)


def _window(
    service: ServiceSpec, start: datetime, end: datetime, now: datetime
) -> tuple[datetime, datetime] | None:
    """The search window narrowed to the notice and the horizon (None: nothing fits)."""
    for value in (start, end, now):
        if value.tzinfo is None:
            raise ValueError("slot search needs aware datetimes")
    lo = clamp(max(start, earliest_start(service, now)))
    hi = clamp(min(end, horizon(service, now)))
    return (lo, hi) if lo < hi else None


def _hours_key(member: StaffSpec, lo: datetime, hi: datetime) -> tuple[object, ...]:
    """What `member`'s candidate times in `[lo, hi)` depend on: zone and each day's hours."""
    first = lo.astimezone(member.tz).date() - timedelta(days=1)
    days = (hi.astimezone(member.tz).date() - first).days + 1
    hours = member.availability.minutes_on
    return (member.tz.key, first, *(tuple(hours(first + timedelta(days=d))) for d in range(days)))


def _local_time(t: float, tz: ZoneInfo) -> time:
    return datetime.fromtimestamp(t, UTC).astimezone(tz).time()


def clamp(value: datetime) -> datetime:
    """An aware instant moved into the years slot search works in (1970-2199)."""
    return min(max(value, EARLIEST), LATEST)


def earliest_start(service: ServiceSpec, now: datetime) -> datetime:
    """The first start the minimum notice allows (clamped: never an OverflowError)."""
    now = clamp(now)
    return now + min(service.min_notice, LATEST - now)


def horizon(service: ServiceSpec, now: datetime) -> datetime:
    """The first start past the booking horizon (clamped: never an OverflowError)."""
    now = clamp(now)
    days = timedelta(days=min(max(service.max_days_ahead, 0), (LATEST - EARLIEST).days))
    return now + min(days, LATEST - now)


def _slot_order(slot: Slot) -> tuple[datetime, str]:
    return slot.start, slot.staff_id


def _member_busy(
    service: ServiceSpec, member: StaffSpec, lo: datetime, hi: datetime, busy: Iterable[Interval]
) -> _BusyIndex:
    """`member`'s busy time and time off around the window, merged, reaching as far as the
    buffered block of a slot starting in it."""
    reach_lo, reach_hi = service.reach(lo, hi)
    time_off = time_off_intervals(member.availability, member.tz, start=reach_lo, end=reach_hi)
    return _BusyIndex([*busy, *time_off], lo=reach_lo, hi=reach_hi)


def _grid(service: ServiceSpec, member: StaffSpec, lo: datetime, hi: datetime) -> Iterator[float]:
    """`member`'s candidate starts in `[lo, hi)` (epoch seconds, in order within each working
    range): each range's start, then every slot step while the slot fits inside the range."""
    duration = service.duration.total_seconds()
    step = service.slot_step.total_seconds()
    lo_ts, hi_ts = lo.timestamp(), hi.timestamp()
    day = lo.astimezone(member.tz).date() - timedelta(days=1)
    last_day = hi.astimezone(member.tz).date()
    while day <= last_day:
        for range_start, range_end in working_ranges(member.availability, member.tz, day):
            t, stop = range_start.timestamp(), range_end.timestamp() - duration
            if t < lo_ts:  # jump ahead on the step grid rather than walking to `lo`
                t += -(-(lo_ts - t) // step) * step
            while t <= stop and t < hi_ts:
                yield t
                t += step
        day += timedelta(days=1)


def _staff_slots(
    service: ServiceSpec, member: StaffSpec, lo: datetime, hi: datetime, busy: Iterable[Interval]
) -> list[Slot]:
    before = service.buffer_before.total_seconds()
    after = service.buffer_after.total_seconds()
    duration = service.duration.total_seconds()
    index = _member_busy(service, member, lo, hi, busy)
    starts, ends, n_busy = index.starts, index.ends, len(index.starts)
    out = []
    for t in _grid(service, member, lo, hi):
        # Inlined `index.free`: this loop runs for every candidate of every search.
        i = bisect_right(ends, t - before)
        if i == n_busy or starts[i] >= t + duration + after:
            s = datetime.fromtimestamp(t, UTC)
            out.append(Slot(s, s + service.duration, member.id))
    return out


def filter_time_of_day(
    slots: Iterable[Slot], tz: ZoneInfo, *, earliest: time | None, latest: time | None
) -> list[Slot]:
    """Slots whose local start (in `tz`) is at or after `earliest` and at or before `latest`."""
    return [s for s in slots if _within(s.start.astimezone(tz).time(), earliest, latest)]


def _within(local: time, earliest: time | None, latest: time | None) -> bool:
    return (earliest is None or local >= earliest) and (latest is None or local <= latest)


def spread(slots: Sequence[Slot], count: int) -> list[Slot]:
    """A few well-spread options: distinct start times, evenly across the list, earliest first."""
    if count <= 0:
        return []
    by_start: dict[datetime, Slot] = {}
    for slot in sorted(slots):
        by_start.setdefault(slot.start, slot)
    unique = list(by_start.values())
    if len(unique) <= count:
        return unique
    if count == 1:
        return unique[:1]
    gap = (len(unique) - 1) / (count - 1)
    return [unique[round(i * gap)] for i in range(count)]
