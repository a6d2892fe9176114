"""Prompt templates, shipped as package data, and the function that fills each one in."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from importlib import resources
from string import Template
from zoneinfo import ZoneInfo

from booking.models import Business, Service, Staff

DAYS_AHEAD = 14


@functools.cache
def load(name: str) -> Template:
    """A template from this package (`system.txt`), for `string.Template` substitution; read
    once per process, not once per call."""
    return Template(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


def spoken_date(day: datetime) -> str:
    return f"{day:%A}, {day:%B} {day.day}, {day.year} ({day:%Y-%m-%d})"


def spoken_clock(moment: datetime) -> str:
    """'9 AM', '9:30 AM' or '12:15 PM': how a receptionist says a time."""
    hour = moment.hour % 12 or 12
    minutes = f":{moment.minute:02d}" if moment.minute else ""
    return f"{hour}{minutes} {'AM' if moment.hour < 12 else 'PM'}"


def system_prompt(
    *,
    business: Business,
    services: Sequence[Service],
    staff: Sequence[Staff],
    now: datetime,
    caller_phone: str | None,
) -> str:
    """The system prompt for one call: business facts and the calendar in the business's zone."""
    if now.tzinfo is None:
        raise ValueError("the system prompt needs an aware `now`")
    local = now.astimezone(ZoneInfo(business.timezone))
    days = [local + timedelta(days=n) for n in range(1, DAYS_AHEAD + 1)]
    return load("system.txt").substitute(
        business_name=business.name,
        timezone=business.timezone,
        now_spoken=f"{local:%A}, {local:%B} {local.day}, {local.year}, {spoken_clock(local)}",
        today=spoken_date(local),
        next_days="\n".join(f"- {spoken_date(day)}" for day in days),
        caller_phone=caller_phone or "withheld (unknown)",
        services="\n".join(_service_line(s, staff) for s in services) or "- none listed",
        staff="\n".join(f"- {m.name} (id: {m.id})" for m in staff) or "- none listed",
        policies=(business.policies or "None given.").strip(),
    )


def _service_line(service: Service, staff: Sequence[Staff]) -> str:
    names = [m.name for m in staff if m.id in service.staff_ids]
    who = f"; with {' or '.join(names)}" if names else ""
    return f"- {service.name} (id: {service.id}, {service.duration_minutes} minutes{who})"
