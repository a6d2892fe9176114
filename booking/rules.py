"""Availability rules of a staff member (weekly hours, date overrides, time off), and expansion.

Rules are written in the staff member's wall-clock time; expansion turns them into aware UTC
intervals, half-open `[start, end)`. Wall times that do not exist (the spring-forward gap) resolve
to the first instant after the gap; ambiguous ones (fall-back) take the first occurrence.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from booking.recurrence import RuleRefused, check_year, compile_rule

log = logging.getLogger(__name__)
Interval = tuple[datetime, datetime]
STORED = {"stored": True}  # validation context for rules read back from the database
# Recurring time off may last at most this long per instance.
MAX_RECURRING_LENGTH = timedelta(days=366)
# Time off entries one staff member may save (each recurring one is compiled when saved).
MAX_TIME_OFF = 100

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


def merge(intervals: list[Interval]) -> list[Interval]:
    """Sort intervals and join those that overlap or touch."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _minutes(hh: str, mm: str) -> int:
    return int(hh) * 60 + int(mm)


def _check_range(value: str) -> str:
    m = _RANGE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a range like '09:00-12:30'")
    start, end = _minutes(m[1], m[2]), _minutes(m[3], m[4])
    if int(m[2]) > 59 or int(m[4]) > 59 or start >= 24 * 60 or end > 24 * 60:
        raise ValueError(f"{value!r} has an impossible time of day")
    if end <= start:
        raise ValueError(f"{value!r} ends before it starts")
    return value.strip()


TimeRange = Annotated[str, AfterValidator(_check_range)]


def parse_range(value: str) -> tuple[int, int]:
    """'09:00-12:30' -> (540, 750), minutes after local midnight."""
    m = _RANGE.match(value)
    assert m is not None, value
    return _minutes(m[1], m[2]), _minutes(m[3], m[4])


def _no_overlap(ranges: list[str]) -> list[str]:
    spans = sorted(parse_range(r) for r in ranges)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ValueError(f"ranges {ranges} overlap")
    return ranges


DayHours = Annotated[list[TimeRange], AfterValidator(_no_overlap)]


_Day = date  # the field `date` below hides the type inside the class
_D = TypeVar("_D", bound=date)


class Override(BaseModel):
    """Other hours on one date; an empty list closes the date."""

    model_config = ConfigDict(extra="forbid")
    date: date
    hours: DayHours = Field(default_factory=list)

    @field_validator("date")
    @classmethod
    def _in_range(cls, value: _Day, info: ValidationInfo) -> _Day:
        return _in_years(value, "date", info)


def _stored(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("stored"))


def _in_years(value: _D, what: str, info: ValidationInfo) -> _D:
    """`value` if it lies in 1970-2199 or was read back as stored; else a validation error."""
    if not _stored(info):
        try:
            check_year(value, what)
        except RuleRefused as exc:
            raise ValueError(str(exc)) from None
    return value


class TimeOff(BaseModel):
    """Busy time: one range, or a recurring one when `rrule` is given (start/end: the first).

    New rules must pass `booking.recurrence` (at most daily, 1970-2199). Rules read back from
    the database (validation context `STORED`) are taken as stored: one saved before those
    limits existed is not expanded but makes every window busy (see `time_off_intervals`).
    """

    model_config = ConfigDict(extra="forbid")
    start: datetime
    end: datetime
    rrule: str | None = None
    reason: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _in_range(cls, value: datetime, info: ValidationInfo) -> datetime:
        return _in_years(value, "the date", info)

    @field_validator("rrule")
    @classmethod
    def _check_rule(cls, value: str | None, info: ValidationInfo) -> str | None:
        start = info.data.get("start")
        if value is None or _stored(info) or not isinstance(start, datetime):
            return value
        try:
            compile_rule(value, start)
        except RuleRefused as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> TimeOff:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError("start and end must both have an offset or both have none")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if (
            self.rrule is not None
            and not _stored(info)
            and (self.end - self.start > MAX_RECURRING_LENGTH)
        ):
            raise ValueError("recurring time off may last at most 366 days each time")
        return self


class WeeklyHours(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mon: DayHours = Field(default_factory=list)
    tue: DayHours = Field(default_factory=list)
    wed: DayHours = Field(default_factory=list)
    thu: DayHours = Field(default_factory=list)
    fri: DayHours = Field(default_factory=list)
    sat: DayHours = Field(default_factory=list)
    sun: DayHours = Field(default_factory=list)

    def for_weekday(self, weekday: int) -> list[str]:
        return list(getattr(self, DAYS[weekday]))


class Availability(BaseModel):
    """Everything that says when one staff member can work."""

    weekly_hours: WeeklyHours = Field(default_factory=WeeklyHours)
    overrides: list[Override] = Field(default_factory=list)
    time_off: list[TimeOff] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_dates(self) -> Availability:
        seen = [o.date for o in self.overrides]
        dupes = sorted({d for d in seen if seen.count(d) > 1})
        if dupes:
            raise ValueError(f"more than one override for {', '.join(map(str, dupes))}")
        return self

    @cached_property
    def parsed_hours(self) -> tuple[list[list[tuple[int, int]]], dict[date, list[tuple[int, int]]]]:
        """Weekly and per-date ranges as minutes, parsed once: slot search asks every day."""
        weekly = [[parse_range(r) for r in self.weekly_hours.for_weekday(d)] for d in range(7)]
        by_date = {o.date: [parse_range(r) for r in o.hours] for o in self.overrides}
        return weekly, by_date

    def hours_on(self, day: date) -> list[str]:
        for override in self.overrides:
            if override.date == day:
                return list(override.hours)
        return self.weekly_hours.for_weekday(day.weekday())

    def minutes_on(self, day: date) -> list[tuple[int, int]]:
        """The working ranges of local `day` as (start, end) minutes after midnight."""
        weekly, by_date = self.parsed_hours
        found = by_date.get(day)
        return found if found is not None else weekly[day.weekday()]


def local_to_utc(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """Wall time `minutes` after midnight of `day` in `tz`, as UTC (24:00 is next midnight)."""
    extra_days, minutes = divmod(minutes, 24 * 60)
    wall = datetime.combine(day + timedelta(days=extra_days), time(minutes // 60, minutes % 60))
    # fold=0 maps a gap time with the pre-transition offset, i.e. past the gap: 02:00 -> 03:00.
    return wall.replace(tzinfo=tz).astimezone(UTC)


def working_ranges(rules: Availability, tz: ZoneInfo, day: date) -> list[Interval]:
    """The working ranges on local `day`, in UTC."""
    out = []
    for start, end in rules.minutes_on(day):
        s, e = local_to_utc(day, start, tz), local_to_utc(day, end, tz)
        if e > s:
            out.append((s, e))
    return out


def _aware(value: datetime, tz: ZoneInfo) -> datetime:
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


def time_off_intervals(
    rules: Availability, tz: ZoneInfo, *, start: datetime, end: datetime
) -> list[Interval]:
    """Time off overlapping `[start, end)`, expanded (RRULEs in wall time) to UTC intervals."""
    out: list[Interval] = []
    for off in rules.time_off:
        if off.rrule is None:
            s, e = _utc(off.start, tz), _utc(off.end, tz)
            if s < end and e > start:
                out.append((s, e))
            continue
        out.extend(_recurring_time_off(off, tz, start=start, end=end))
    return out


def _utc(value: datetime, tz: ZoneInfo) -> datetime:
    """`value` (wall time in `tz` when naive) in UTC, clamped at the ends of the calendar."""
    try:
        return _aware(value, tz).astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year < 5000 else datetime.max).replace(tzinfo=UTC)


def _recurring_time_off(
    off: TimeOff, tz: ZoneInfo, *, start: datetime, end: datetime
) -> list[Interval]:
    # Expand in wall time so a weekly 13:00 stays 13:00 across DST.
    zone = off.start.tzinfo if off.start.tzinfo is not None else tz
    first = off.start.replace(tzinfo=None)
    length = off.end.replace(tzinfo=None) - first
    try:
        if length > MAX_RECURRING_LENGTH:
            raise RuleRefused("an instance lasts more than 366 days")
        check_year(off.end.replace(tzinfo=None), "the end")
        rule = compile_rule(off.rrule or "", first)
        lo = start.astimezone(zone).replace(tzinfo=None) - length - timedelta(days=1)
        hi = end.astimezone(zone).replace(tzinfo=None) + timedelta(days=1)
        occurrences = rule.between(lo, hi)
    except (RuleRefused, OverflowError) as exc:
        # Saved before the limits existed, or a window no rule can fill: busy, never bookable.
        _refused(off.rrule or "", first.isoformat(), str(exc))
        return [(start, end)]
    out = []
    for occurrence in occurrences:
        s = occurrence.replace(tzinfo=zone).astimezone(UTC)
        e = (occurrence + length).replace(tzinfo=zone).astimezone(UTC)
        if s < end and e > start:
            out.append((s, e))
    return out


@lru_cache(maxsize=256)
def _refused(rrule: str, start: str, reason: str) -> None:
    # Cached: one warning per stored rule and process, not one per slot search.
    log.warning(
        "recurring time off %r from %s is not expanded (%s): the staff member is shown "
        "busy until it is corrected",
        rrule,
        start,
        reason,
    )
