"""Recurring time off: which RRULEs a staff member may save, and their expansion for one window.

Time off repeats at most daily: FREQ=DAILY, WEEKLY, MONTHLY or YEARLY, with INTERVAL, COUNT (at
most 10,000), UNTIL, BYDAY, BYMONTHDAY, BYMONTH, WKST and at most one BYHOUR, BYMINUTE and
BYSECOND value; DTSTART and UNTIL lie in the years 1970-2199. Anything else is `RuleRefused`,
with a one-line reason naming the part.

Expansion gives dateutil's instances (the tests compare the two) without walking from DTSTART:
the window is gone through month by month, and in each month only the days the BY parts name
are made (arithmetic on day numbers), so the cost is the window's months and instances however
old the rule is and however rarely it matches. dateutil walks a rule that never matches, such as
FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30, period by period to the year 9999 (seconds, every search).
A COUNT becomes the rule's last instance once, when the rule is compiled (and cached), counted
the same way: at most the 2,760 months to 2199 plus the instances (about 10 ms at worst).
"""

from __future__ import annotations

import re
from calendar import isleap, monthrange
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from functools import cached_property, lru_cache

from dateutil.rrule import rrulestr

MIN_YEAR, MAX_YEAR = 1970, 2199
EARLIEST = datetime(MIN_YEAR, 1, 1)
LATEST = datetime(MAX_YEAR, 12, 31, 23, 59, 59)
MAX_COUNT = 10_000
MAX_INSTANCES = 10_000  # days one expansion may look at (at most one instance a day)
MAX_INTERVAL = 1_000

FREQS = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
_FINER = ("SECONDLY", "MINUTELY", "HOURLY")
_WEEKDAYS = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}
_SUPPORTED = {
    "FREQ",
    "INTERVAL",
    "COUNT",
    "UNTIL",
    "BYDAY",
    "BYMONTHDAY",
    "BYMONTH",
    "BYHOUR",
    "BYMINUTE",
    "BYSECOND",
    "WKST",
}
_UNSUPPORTED = {"BYSETPOS", "BYYEARDAY", "BYWEEKNO", "BYEASTER"}
_INT = re.compile(r"^[+-]?\d{1,6}$")
_BYDAY = re.compile(r"^([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)$")
_LENGTHS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_UNTIL = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})(\d{2}))?$")


class RuleRefused(ValueError):
    """A recurrence rule that time off may not use; the message says which part and why."""


class TooManyInstances(RuleRefused):
    """An expansion that would look at more than `MAX_INSTANCES` days."""


def check_year(value: date, what: str) -> None:
    """Refuse a date outside the years time off and bookings may use (1970-2199)."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise RuleRefused(f"{what} {value.isoformat()} is outside the years {MIN_YEAR}-{MAX_YEAR}")


@dataclass(frozen=True)
class DayRule:
    """A compiled rule of at most one instance a day, in naive wall time."""

    freq: str
    interval: int
    dtstart: datetime
    until: datetime | None  # the latest instant an instance may start (inclusive)
    months: frozenset[int]
    monthdays: frozenset[int]  # positive days of the month
    neg_monthdays: frozenset[int]  # -1 is the last day of the month
    weekdays: frozenset[int]  # 0 is Monday
    nth: tuple[tuple[int, int], ...]  # (weekday, n): the n-th such weekday of the month or year
    wkst: int
    at: time

    def occurs_on(self, day: date) -> bool:
        """Whether the rule (ignoring DTSTART's time, UNTIL and COUNT) has an instance on `day`."""
        first = self.dtstart.date()
        if day < first:
            return False
        if self.freq == "DAILY":
            step = day.toordinal() - first.toordinal()
        elif self.freq == "WEEKLY":
            step = (self._week_start(day) - self._week_start(first)) // 7
        elif self.freq == "MONTHLY":
            step = (day.year - first.year) * 12 + day.month - first.month
        else:
            step = day.year - first.year
        if step % self.interval:
            return False
        if self.months and day.month not in self.months:
            return False
        if self.weekdays and day.weekday() not in self.weekdays:
            return False
        if self.monthdays or self.neg_monthdays:
            length = monthrange(day.year, day.month)[1]
            if day.day not in self.monthdays and day.day - length - 1 not in self.neg_monthdays:
                return False
        return not self.nth or self._nth_matches(day)

    def _week_start(self, day: date) -> int:
        return day.toordinal() - (day.weekday() - self.wkst) % 7

    def _nth_matches(self, day: date) -> bool:
        # As dateutil: counted within the month for MONTHLY, and for YEARLY with BYMONTH;
        # within the year otherwise.
        weekday = day.weekday()
        if all(wanted != weekday for wanted, _ in self.nth):
            return False
        if self.freq == "MONTHLY" or self.months:
            offset, from_end = day.day - 1, monthrange(day.year, day.month)[1] - day.day
        else:
            offset = day.timetuple().tm_yday - 1
            from_end = (366 if isleap(day.year) else 365) - 1 - offset
        for wanted, n in self.nth:
            if wanted == weekday and (offset // 7 + 1 == n if n > 0 else from_end // 7 + 1 == -n):
                return True
        return False

    def between(self, lo: datetime, hi: datetime) -> list[datetime]:
        """Instances (naive wall time) in `[lo, hi]`; `TooManyInstances` past the day budget."""
        first = max(lo, self.dtstart, EARLIEST)
        last = min(hi, self.until or LATEST, LATEST)
        if first > last:
            return []
        day, stop = first.date(), last.date()
        if stop.toordinal() - day.toordinal() >= MAX_INSTANCES:
            raise TooManyInstances(f"one expansion looks at most {MAX_INSTANCES} days")
        out = []
        for found in self._days(day, stop):
            instance = datetime.combine(found, self.at)
            if first <= instance <= last:
                out.append(instance)
        return out

    def _days(self, day: date, stop: date) -> Iterator[date]:
        """The days from `day` through `stop` with an instance."""
        for month in self._months(day, stop):
            yield from map(date.fromordinal, month)

    def _months(self, day: date, stop: date) -> Iterator[list[int]]:
        """The days (ordinals) from `day` through `stop` with an instance, a month at a time.

        Only the days the BY parts allow are made (the listed days of the month, the numbered
        weekdays, the weekdays), so the cost is the instances plus a few steps a month; months,
        and DAILY days and WEEKLY weeks, that INTERVAL or BYMONTH leave out are jumped over.
        """
        current, end = max(day.toordinal(), self._first), stop.toordinal()
        while current <= end:
            day = date.fromordinal(current)
            year, month, first = day.year, day.month, current - day.day + 1
            while current <= end:  # month by month, until INTERVAL jumps past a month
                length = _month_length(year, month)
                following = first + length
                if not self._month_closed(year, month):
                    current = self._aligned(current)
                    if current >= following:
                        break
                    found = self._candidates(year, month, first, current, min(following - 1, end))
                    if found:
                        yield found
                current, first = following, following
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    @cached_property
    def _first(self) -> int:
        return self.dtstart.date().toordinal()

    @cached_property
    def _stepped(self) -> bool:
        """Whether INTERVAL leaves days out that `_month_closed` does not (DAILY and WEEKLY)."""
        return self.interval > 1 and self.freq in ("DAILY", "WEEKLY")

    def _aligned(self, ordinal: int) -> int:
        """The first day from `ordinal` on that DAILY's or WEEKLY's INTERVAL allows."""
        first = self._first
        ordinal = max(ordinal, first)
        if not self._stepped:
            return ordinal
        if self.freq == "DAILY":
            return first + -(-(ordinal - first) // self.interval) * self.interval
        period = 7 * self.interval
        week0 = first - ((first - 1) % 7 - self.wkst) % 7  # ordinal 1 is a Monday
        week = ordinal - ((ordinal - 1) % 7 - self.wkst) % 7
        return max(ordinal, week0 + -(-(week - week0) // period) * period)

    def _candidates(self, year: int, month: int, first: int, lo: int, last: int) -> list[int]:
        """The instances (ordinals) from `lo` through `last`, in the month starting at `first`."""
        length = _month_length(year, month)
        if self.monthdays or self.neg_monthdays:
            numbers = {d for d in self.monthdays if d <= length}
            numbers |= {length + 1 + d for d in self.neg_monthdays if -d <= length}
            found: Iterable[int] = (first + d - 1 for d in numbers)
            if self.weekdays or self.nth:
                found = [o for o in found if self._weekday_matches(date.fromordinal(o))]
        elif self.nth:
            if self.freq == "MONTHLY" or self.months:
                found = _nth_days(self.nth, first, length)
            else:
                found = _nth_days(self.nth, date(year, 1, 1).toordinal(), 365 + isleap(year))
        elif self.weekdays:
            weekday = (lo - 1) % 7  # ordinal 1, 0001-01-01, is a Monday
            found = (o for w in self.weekdays for o in range(lo + (w - weekday) % 7, last + 1, 7))
        else:
            step = self.interval if self.freq == "DAILY" else 1
            return list(range(self._aligned(lo), last + 1, step))
        if self._stepped:
            return sorted(o for o in found if lo <= o <= last and self._aligned(o) == o)
        return sorted(o for o in found if lo <= o <= last)

    def _weekday_matches(self, day: date) -> bool:
        if self.weekdays and day.weekday() not in self.weekdays:
            return False
        return not self.nth or self._nth_matches(day)

    def _month_closed(self, year: int, month: int) -> bool:
        if self.months and month not in self.months:
            return True
        if self.interval == 1:
            return False
        first = self.dtstart
        if self.freq == "MONTHLY":
            return bool(((year - first.year) * 12 + month - first.month) % self.interval)
        return self.freq == "YEARLY" and bool((year - first.year) % self.interval)

    def happens_within(self, days: int) -> bool:
        """Whether the rule (COUNT and UNTIL aside) has an instance in `days` days from DTSTART."""
        first = self.dtstart.date()
        stop = date.fromordinal(min(first.toordinal() + days, date(9999, 11, 30).toordinal()))
        return any(
            datetime.combine(day, self.at) >= self.dtstart for day in self._days(first, stop)
        )

    def _counted_until(self, count: int) -> datetime | None:
        """The `count`-th instance, or None when the rule ends (2199) before it."""
        # DTSTART's own day is not an instance when the rule's time of day is before DTSTART's.
        early = datetime.combine(self.dtstart.date(), self.at) < self.dtstart
        for month in self._months(self.dtstart.date(), LATEST.date()):
            if early and month[0] == self.dtstart.toordinal():
                month = month[1:]
            early = False
            if count <= len(month):
                return datetime.combine(date.fromordinal(month[count - 1]), self.at)
            count -= len(month)
        return None


def _month_length(year: int, month: int) -> int:
    return _LENGTHS[month] + (month == 2 and isleap(year))


@lru_cache(maxsize=1024)
def _nth_days(nth: tuple[tuple[int, int], ...], start: int, days: int) -> frozenset[int]:
    """The numbered weekdays (BYDAY=2MO, -1FR) in the `days` days from ordinal `start` (a month
    or a year; cached, as a year is asked for once a month)."""
    weekday, out = (start - 1) % 7, set()  # ordinal 1, 0001-01-01, is a Monday
    for wanted, n in nth:
        if n > 0:
            offset = (wanted - weekday) % 7 + 7 * (n - 1)
        else:
            last_weekday = (weekday + days - 1) % 7
            offset = days - 1 - (last_weekday - wanted) % 7 - 7 * (-n - 1)
        if 0 <= offset < days:
            out.add(start + offset)
    return frozenset(out)


def compile_rule(text: str, dtstart: datetime) -> DayRule:
    """The rule `text` (an RRULE value) starting at naive wall time `dtstart`, or `RuleRefused`."""
    return _compile(text, dtstart.replace(tzinfo=None, microsecond=0))


def pattern_of(text: str, dtstart: datetime) -> DayRule:
    """The days a rule of someone else's calendar can fall on, without time off's limits: any
    year, any INTERVAL, COUNT and UNTIL ignored. `RuleRefused` for what `DayRule` cannot
    express (finer than daily, BYSETPOS and the like)."""
    return _compile(text, dtstart.replace(tzinfo=None, microsecond=0), limits=False)


@lru_cache(maxsize=4096)
def _compile(text: str, dtstart: datetime, *, limits: bool = True) -> DayRule:
    if limits:
        check_year(dtstart, "the start")
    parts = _parts(text)
    if not limits:
        parts.pop("COUNT", None)
        parts.pop("UNTIL", None)
    freq = parts["FREQ"]
    if freq in _FINER:
        raise RuleRefused(
            f"FREQ={freq} repeats more often than daily: time off repeats at most "
            "daily (DAILY, WEEKLY, MONTHLY or YEARLY)"
        )
    if freq not in FREQS:
        raise RuleRefused(f"FREQ={freq} is not one of {', '.join(FREQS)}")
    interval = _one_int(parts, "INTERVAL", 1, MAX_INTERVAL if limits else 10**6) or 1
    count = _one_int(parts, "COUNT", 1, MAX_COUNT)
    until = _until(parts["UNTIL"]) if "UNTIL" in parts else None
    if count is not None and until is not None:
        raise RuleRefused("COUNT and UNTIL cannot both be given")
    hour, minute, second = (
        _time_part(parts, name, top)
        for name, top in (("BYHOUR", 23), ("BYMINUTE", 59), ("BYSECOND", 59))
    )
    months = frozenset(_ints(parts, "BYMONTH", 1, 12))
    days = _ints(parts, "BYMONTHDAY", -31, 31)
    if 0 in days:
        raise RuleRefused("BYMONTHDAY=0 is not a day of the month")
    weekdays, nth = _byday(parts, freq, bool(months))
    wkst = _WEEKDAYS.get(parts.get("WKST", "MO"))
    if wkst is None:
        raise RuleRefused(f"WKST={parts['WKST']} is not a weekday (MO, TU, ... SU)")
    if not days and not weekdays and not nth:  # dateutil's defaults, taken from DTSTART
        if freq == "YEARLY":
            months = months or frozenset({dtstart.month})
            days = [dtstart.day]
        elif freq == "MONTHLY":
            days = [dtstart.day]
        elif freq == "WEEKLY":
            weekdays = frozenset({dtstart.weekday()})
    at = time(
        dtstart.hour if hour is None else hour,
        dtstart.minute if minute is None else minute,
        dtstart.second if second is None else second,
    )
    try:  # the whole ecosystem (dateutil, calendar exports) must read what we store
        if limits:
            rrulestr(text, dtstart=dtstart)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RuleRefused(f"not a valid RRULE: {exc}") from None
    rule = DayRule(
        freq=freq,
        interval=interval,
        dtstart=dtstart,
        until=until,
        months=months,
        monthdays=frozenset(d for d in days if d > 0),
        neg_monthdays=frozenset(d for d in days if d < 0),
        weekdays=weekdays,
        nth=nth,
        wkst=wkst,
        at=at,
    )
    if count is not None:
        rule = replace(rule, until=rule._counted_until(count) or LATEST)
    return rule


def _parts(text: str) -> dict[str, str]:
    raw = text.strip().upper()
    raw = raw.removeprefix("RRULE:")
    if not raw or "\n" in raw or "\r" in raw:
        raise RuleRefused("give one RRULE such as FREQ=WEEKLY;BYDAY=MO")
    parts: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise RuleRefused(f"{item!r} is not NAME=VALUE")
        if name in parts:
            raise RuleRefused(f"{name} is given twice")
        if name in _UNSUPPORTED:
            raise RuleRefused(f"{name} is not supported for time off")
        if name not in _SUPPORTED:
            raise RuleRefused(f"{name} is not an RRULE part")
        parts[name] = value
    if "FREQ" not in parts:
        raise RuleRefused("FREQ is missing (DAILY, WEEKLY, MONTHLY or YEARLY)")
    return parts


def _ints(parts: dict[str, str], name: str, low: int, high: int) -> list[int]:
    if name not in parts:
        return []
    out = []
    for value in parts[name].split(","):
        if not _INT.match(value):
            raise RuleRefused(f"{name}={parts[name]} is not a list of numbers")
        number = int(value)
        if not low <= number <= high:
            raise RuleRefused(f"{name}={value} is outside {low}..{high}")
        out.append(number)
    return out


def _one_int(parts: dict[str, str], name: str, low: int, high: int) -> int | None:
    if name in parts and not _INT.match(parts[name]):
        raise RuleRefused(f"{name}={parts[name]} is not a number")
    if name in parts and int(parts[name]) > high:
        raise RuleRefused(f"{name}={parts[name]} is more than {high}")
    values = _ints(parts, name, low, high)
    return values[0] if values else None


def _time_part(parts: dict[str, str], name: str, high: int) -> int | None:
    values = sorted(set(_ints(parts, name, 0, high)))
    if len(values) > 1:
        raise RuleRefused(f"{name}={parts[name]} repeats more often than daily: give one value")
    return values[0] if values else None


def _until(value: str) -> datetime:
    # UTC ('Z') is refused: the rule runs in the staff member's wall time, as DTSTART does.
    m = _UNTIL.match(value)
    if not m:
        raise RuleRefused(f"UNTIL={value} is not a date like 20261231 or 20261231T170000")
    try:
        year, month, day, hour, minute, second = (int(g or 0) for g in m.groups())
        until = datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise RuleRefused(f"UNTIL={value} is not a real date") from None
    check_year(until, "UNTIL")
    return until


def _byday(
    parts: dict[str, str], freq: str, monthly_years: bool
) -> tuple[frozenset[int], tuple[tuple[int, int], ...]]:
    if "BYDAY" not in parts:
        return frozenset(), ()
    plain: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for value in parts["BYDAY"].split(","):
        m = _BYDAY.match(value)
        if not m:
            raise RuleRefused(f"BYDAY={value} is not a weekday like MO, 1MO or -1FR")
        weekday = _WEEKDAYS[m[2]]
        if m[1] is None:
            plain.add(weekday)
            continue
        n = int(m[1])
        if freq in ("DAILY", "WEEKLY"):
            raise RuleRefused(f"BYDAY={value} (a numbered weekday) needs FREQ=MONTHLY or YEARLY")
        top = 5 if freq == "MONTHLY" or monthly_years else 53
        if n == 0 or abs(n) > top:
            raise RuleRefused(f"BYDAY={value}: the number must be 1..{top} or -{top}..-1")
        nth.add((weekday, n))
    if plain and nth:
        raise RuleRefused("BYDAY mixes plain and numbered weekdays: use one kind")
    return frozenset(plain), tuple(sorted(nth))
