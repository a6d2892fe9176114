"""Appointment reminders: when each is due, what it says, and queueing it exactly once.

A business reminds callers before each appointment (by default 24 hours and 2 hours before), with
per-service overrides, in wording with placeholders. A reminder is due at its offset before the
start (whole days in the business's wall-clock time, so "1 day before" a 10:00 appointment is
10:00 the day before across a DST change); one that would fall in quiet hours (default
21:00-08:00 in the business zone) goes 15 minutes before they begin instead, never during them.

The planner (`ReminderPlanner.plan_due`) finds confirmed appointments whose reminder is due and
queues one text each in the durable SMS outbox under the key `reminder:{appointment}:{minutes}`:
the outbox's unique key makes it once across workers and restarts, and the planning transaction
locks the appointments it plans (PostgreSQL) or holds the write lock (SQLite), so a cancellation
either commits first (nothing is queued) or voids the queued text (`void_reminders`, in the
cancelling transaction). A moved appointment is a new appointment: its reminders follow its new
time, and the old one's are voided. A reminder whose time had passed when the appointment was
booked is never sent (booked 3 hours ahead: the 2-hour one only); after downtime only the latest
due reminder of an appointment goes, never a burst of stale ones.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from booking import claims, phones
from booking.clock import Clock, SystemClock
from booking.db import in_session
from booking.models import (
    Appointment,
    AppointmentStatus,
    Business,
    Contact,
    Service,
    SmsKind,
    SmsMessage,
    SmsStatus,
    Staff,
    new_id,
)

T = TypeVar("T")
SMS = SmsMessage.__table__  # type: ignore[attr-defined]
APPOINTMENT = Appointment.__table__  # type: ignore[attr-defined]

DEFAULT_BEFORE = (24 * 60, 2 * 60)
DEFAULT_TEXT = (
    "{business}: reminder of your {service} with {staff} on {date} at {time}. "
    "Reply C to confirm or X to cancel."
)
DEFAULT_QUIET = "21:00-08:00"
QUIET_MARGIN = timedelta(minutes=15)  # a reminder moved out of quiet hours goes this long before
MAX_REMINDERS = 5
MAX_BEFORE_MINUTES = 30 * 24 * 60
MAX_TEXT = 640  # four GSM-7 segments; keep it to one where possible (see `segments`)
PLACEHOLDERS = ("name", "service", "staff", "date", "time", "business", "address", "zone")
# How far ahead the planner looks beyond the longest offset: quiet hours can move a reminder up
# to 11 h earlier, a DST change another hour.
LOOKAHEAD_SLACK = timedelta(hours=13)
PLAN_BATCH = 500

_OFFSET = re.compile(r"^\s*(\d{1,5})\s*(m|min|mins|minutes?|h|hours?|d|days?)\s*$", re.I)
_QUIET = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440}


# ---- settings -------------------------------------------------------------------------------


def parse_offset(value: Any) -> int:
    """Minutes before the start: 1440, "24h", "2 hours", "90m", "1d"."""
    if isinstance(value, bool):
        raise ValueError("write a time before the appointment like '24h', '2h' or '90m'")
    if isinstance(value, int):
        minutes = value
    elif isinstance(value, str) and (m := _OFFSET.match(value)):
        minutes = int(m.group(1)) * _UNIT_MINUTES[m.group(2)[0].lower()]
    else:
        raise ValueError(f"{value!r} is not a time before the appointment like '24h' or '90m'")
    if not 0 < minutes <= MAX_BEFORE_MINUTES:
        raise ValueError("a reminder goes between 1 minute and 30 days before the appointment")
    return minutes


def format_offset(minutes: int) -> str:
    """The file's way of writing `minutes`: "1d", "24h" stays hours, "90m"."""
    if minutes % 60:
        return f"{minutes}m"
    return f"{minutes // 60}h"


def parse_quiet(value: str) -> tuple[time, time]:
    m = _QUIET.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not quiet hours like '21:00-08:00'")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{value!r} is not quiet hours like '21:00-08:00'")
    begin, end = time(h1, m1), time(h2, m2)
    if begin == end:
        raise ValueError("quiet hours must not begin and end at the same time")
    return begin, end


def check_text(value: str) -> str:
    """A reminder's wording: only known placeholders, bounded, renders."""
    text = value.strip()
    if not text:
        raise ValueError("the reminder text is empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"the reminder text is longer than {MAX_TEXT} characters")
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"the reminder text has a stray brace: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{name}}} in the reminder text (use {known})")
        if spec or conversion:
            raise ValueError(f"write {{{name}}} without a format or conversion")
    return text


def _offsets(value: Any) -> Any:
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("list the times before the appointment, like [24h, 2h]")
    minutes = sorted({parse_offset(v) for v in value}, reverse=True)
    if len(minutes) > MAX_REMINDERS:
        raise ValueError(f"at most {MAX_REMINDERS} reminders per appointment")
    return minutes


Offsets = Annotated[list[int], BeforeValidator(_offsets)]


class ReminderSettings(BaseModel):
    """A business's reminders (`reminders:` under `business:` in the business file)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    before: Offsets = Field(default_factory=lambda: list(DEFAULT_BEFORE))
    text: str = DEFAULT_TEXT
    quiet_hours: str | None = DEFAULT_QUIET  # None: any hour

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return check_text(value)

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off", "none"):
            return None
        begin, end = parse_quiet(value)
        return f"{begin:%H:%M}-{end:%H:%M}"


class ServiceReminders(BaseModel):
    """A service's overrides (`reminders:` on a service); unset fields follow the business."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    before: Offsets | None = None
    text: str | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value)


@dataclass(frozen=True)
class Policy:
    """The reminders one service's appointments get."""

    before: tuple[int, ...]  # minutes, longest first; empty: no reminders
    text: str
    quiet: tuple[time, time] | None


def policy(business: Business, service: Service | None) -> Policy:
    settings = ReminderSettings.model_validate(business.reminders or {})
    override = ServiceReminders.model_validate((service.reminders if service else None) or {})
    enabled = settings.enabled if override.enabled is None else override.enabled
    before = override.before if override.before is not None else settings.before
    return Policy(
        before=tuple(before) if enabled else (),
        text=override.text or settings.text,
        quiet=parse_quiet(settings.quiet_hours) if settings.quiet_hours else None,
    )


# ---- when ------------------------------------------------------------------------------------


def in_quiet(moment: datetime, tz: ZoneInfo, quiet: tuple[time, time] | None) -> bool:
    if quiet is None:
        return False
    t = moment.astimezone(tz).time()
    begin, end = quiet
    if begin < end:
        return begin <= t < end
    return t >= begin or t < end


def due_at(
    start: datetime, minutes: int, tz: ZoneInfo, quiet: tuple[time, time] | None
) -> datetime:
    """When the reminder `minutes` before `start` goes (UTC)."""
    if minutes % 1440 == 0:  # whole days: the same wall-clock time, days earlier
        local = start.astimezone(tz)
        wall = local.replace(tzinfo=None) - timedelta(days=minutes // 1440)
        due = wall.replace(tzinfo=tz).astimezone(UTC)
    else:
        due = start.astimezone(UTC) - timedelta(minutes=minutes)
    if not in_quiet(due, tz, quiet):
        return due
    assert quiet is not None
    begin, end = quiet
    local = due.astimezone(tz)
    day = local.date()
    if begin > end and local.time() < end:  # past midnight: quiet began the evening before
        day -= timedelta(days=1)
    moved = datetime.combine(day, begin).replace(tzinfo=tz).astimezone(UTC) - QUIET_MARGIN
    return moved


def pick(
    *,
    start: datetime,
    created_at: datetime,
    policy: Policy,
    tz: ZoneInfo,
    now: datetime,
) -> int | None:
    """Which reminder (minutes before) of an appointment to send now, or None.

    The latest one already due, if it was booked before that was due, the appointment is still
    ahead and now is not in quiet hours."""
    if start <= now or in_quiet(now, tz, policy.quiet):
        return None
    due = [(due_at(start, m, tz, policy.quiet), m) for m in policy.before]
    ready = [(when, m) for when, m in due if when <= now]
    if not ready:
        return None
    when, minutes = max(ready)
    return minutes if when >= created_at else None


# ---- what it says ----------------------------------------------------------------------------


def render(
    text: str,
    *,
    name: str | None,
    service: str,
    staff: str,
    start: datetime,
    tz: ZoneInfo,
    business: str,
    address: str | None,
    name_zone: bool = False,
) -> str:
    """The text, with the date and time in the business's zone; `name_zone` adds the zone's
    abbreviation to the time (for a caller whose number is from another zone)."""
    local = start.astimezone(tz)
    clock = f"{local:%I:%M %p}".lstrip("0")
    if name_zone and "{zone}" not in text:
        clock = f"{clock} {local.tzname()}"
    values = {
        "name": (name or "").strip() or "there",
        "service": service,
        "staff": staff,
        "date": f"{local:%a %b} {local.day}",
        "time": clock,
        "business": business,
        "address": address or "",
        "zone": local.tzname() or "",
    }
    body = text.format_map(values)
    return re.sub(r"[ \t]{2,}", " ", body).strip()


def elsewhere(phone: str, moment: datetime, tz: ZoneInfo) -> bool:
    """Whether `phone`'s area code puts the caller in a zone whose clock differs from `tz`'s at
    `moment` (then the reminder names the zone); False when the number does not say."""
    zones = phones.zones_of(phone)
    if not zones:
        return False
    offset = moment.astimezone(tz).utcoffset()
    return all(moment.astimezone(ZoneInfo(z)).utcoffset() != offset for z in zones)


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets or UTF-16 code units
    count: int


def segments(text: str) -> Segments:
    """How many SMS segments `text` takes: GSM-7 (160 septets alone, 153 when split; the
    extension characters such as [ ] { } € take two) or, with any other character, UCS-2 (70
    UTF-16 units alone, 67 when split)."""
    import gsm0338  # type: ignore[import-untyped]  # noqa: F401  (registers "gsm03.38")

    try:
        units = len(text.encode("gsm03.38"))
    except UnicodeEncodeError:
        units = len(text.encode("utf-16-le")) // 2
        return Segments("UCS-2", units, 1 if units <= 70 else math.ceil(units / 67))
    return Segments("GSM-7", units, 1 if units <= 160 else math.ceil(units / 153))


def longest_texts(
    settings: ReminderSettings,
    overrides: dict[str, ServiceReminders | None],
    *,
    business: str,
    address: str | None,
    services: dict[str, str],
    staff: list[str],
) -> list[tuple[str, Segments]]:
    """Each service's reminder rendered at its longest (the longest staff name, a 10-letter
    caller name, a two-digit date at 10:00) with its segment count, for the importer to warn
    about texts that take more than one."""
    out: list[tuple[str, Segments]] = []
    start = datetime(2026, 12, 30, 10, 0, tzinfo=UTC)
    for service_id, name in services.items():
        override = overrides.get(service_id)
        text = (override.text if override is not None else None) or settings.text
        body = render(
            text,
            name="Alexandrina",
            service=name,
            staff=max(staff, key=len, default=""),
            start=start,
            tz=ZoneInfo("UTC"),
            business=business,
            address=address,
        )
        out.append((service_id, segments(body)))
    return out


# ---- queueing --------------------------------------------------------------------------------


def reminder_key(appointment_id: str, minutes: int) -> str:
    return f"reminder:{appointment_id}:{minutes}"


def void_reminders(s: Session, appointment_id: str, now: datetime) -> int:
    """In a cancelling or moving transaction: reminders of `appointment_id` not yet sent are
    never sent (a sender holding one re-reads it before posting)."""
    done = s.execute(
        sa.update(SMS)
        .where(
            SMS.c.appointment_id == appointment_id,
            SMS.c.kind == SmsKind.REMINDER.value,
            SMS.c.status == SmsStatus.PENDING.value,
        )
        .values(status=SmsStatus.CANCELLED.value, error="the appointment was cancelled or moved")
    )
    return claims.rowcount(done)


@dataclass(frozen=True)
class Planned:
    sms_id: str
    appointment_id: str
    minutes: int


@dataclass
class ReminderPlanner:
    """Queues due reminders into the SMS outbox (`sms_message`), once per appointment and
    offset. Run it from one worker at a time (a job lease); were two to run, the outbox's unique
    key still queues each reminder once."""

    engine: Engine
    clock: Clock = SystemClock()
    batch: int = PLAN_BATCH

    async def plan_due(self, *, now: datetime | None = None) -> list[Planned]:
        """Queue every reminder due now; what was queued."""
        when = (now or self.clock.now()).astimezone(UTC)
        return await in_session(self.engine, lambda s: self._plan(s, when), write=True)

    def _plan(self, s: Session, now: datetime) -> list[Planned]:
        planned: list[Planned] = []
        for business in s.exec(select(Business).order_by(col(Business.id))):
            planned.extend(self._plan_business(s, business, now))
        return planned

    def _plan_business(self, s: Session, business: Business, now: datetime) -> list[Planned]:
        sender = next(iter(business.phone_numbers), None)
        if sender is None:
            return []
        tz = ZoneInfo(business.timezone)
        services = {
            row.id: row for row in s.exec(select(Service).where(Service.business_id == business.id))
        }
        policies = {sid: policy(business, row) for sid, row in services.items()}
        longest = max((p.before[0] for p in policies.values() if p.before), default=None)
        if longest is None:
            return []
        horizon = now + timedelta(minutes=longest) + LOOKAHEAD_SLACK
        query = (
            sa.select(
                APPOINTMENT.c.id,
                APPOINTMENT.c.service_id,
                APPOINTMENT.c.start,
                APPOINTMENT.c.created_at,
            )
            .where(
                APPOINTMENT.c.business_id == business.id,
                APPOINTMENT.c.status == AppointmentStatus.CONFIRMED.value,
                APPOINTMENT.c.start > now,
                APPOINTMENT.c.start <= horizon,
            )
            .order_by(APPOINTMENT.c.start, APPOINTMENT.c.id)
        )
        if s.get_bind().dialect.name == "postgresql":
            # A cancellation waits for this transaction (and then voids what it queued), or
            # commits first and this one no longer sees the appointment as confirmed.
            query = query.with_for_update(of=APPOINTMENT, skip_locked=True)
        due: list[tuple[str, int]] = []
        for row in s.execute(query):
            rule = policies.get(row.service_id)
            if rule is None:
                continue
            minutes = pick(start=row.start, created_at=row.created_at, policy=rule, tz=tz, now=now)
            if minutes is not None:
                due.append((row.id, minutes))
        planned: list[Planned] = []
        for chunk in _chunks(due, self.batch):
            planned.extend(self._queue(s, business, sender, tz, services, policies, chunk, now))
        return planned

    def _queue(
        self,
        s: Session,
        business: Business,
        sender: str,
        tz: ZoneInfo,
        services: dict[str, Service],
        policies: dict[str, Policy],
        chunk: list[tuple[str, int]],
        now: datetime,
    ) -> list[Planned]:
        keys = {reminder_key(aid, m): (aid, m) for aid, m in chunk}
        known = set(
            s.execute(
                sa.select(SMS.c.key).where(
                    SMS.c.business_id == business.id, SMS.c.key.in_(list(keys))
                )
            ).scalars()
        )
        fresh = [(aid, m) for key, (aid, m) in keys.items() if key not in known]
        if not fresh:
            return []
        wanted = [aid for aid, _ in fresh]
        rows = {a.id: a for a in s.exec(select(Appointment).where(col(Appointment.id).in_(wanted)))}
        people = {a.contact_id for a in rows.values()}
        contacts = {c.id: c for c in s.exec(select(Contact).where(col(Contact.id).in_(people)))}
        staff = {
            m.id: m.name for m in s.exec(select(Staff).where(Staff.business_id == business.id))
        }
        values: list[dict[str, Any]] = []
        planned: list[Planned] = []
        for aid, minutes in fresh:
            apt = rows[aid]
            contact = contacts.get(apt.contact_id)
            if contact is None or not contact.phone:
                continue
            service = services[apt.service_id]
            body = render(
                policies[apt.service_id].text,
                name=contact.name,
                service=service.name,
                staff=staff.get(apt.staff_id, apt.staff_id),
                start=apt.start,
                tz=tz,
                business=business.name,
                address=business.address,
                name_zone=elsewhere(contact.phone, apt.start, tz),
            )
            sms_id = new_id("sms")
            values.append(
                {
                    "id": sms_id,
                    "business_id": business.id,
                    "key": reminder_key(aid, minutes),
                    "to_number": contact.phone,
                    "from_number": sender,
                    "body": body,
                    "status": SmsStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "kind": SmsKind.REMINDER.value,
                    "appointment_id": aid,
                }
            )
            planned.append(Planned(sms_id, aid, minutes))
        if not values:
            return []
        insert = claims.insert_for(s)(SMS).values(values)
        inserted = set(
            s.execute(
                insert.on_conflict_do_nothing(index_elements=["business_id", "key"]).returning(
                    SMS.c.id
                )
            ).scalars()
        )
        return [p for p in planned if p.sms_id in inserted]


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
