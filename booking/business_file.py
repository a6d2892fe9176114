"""The business file: one YAML or JSON document that describes a business, its services and staff.

`load_business_file` reads and validates it (every problem named by its path in the file),
`import_business` makes the database match it in one write transaction, and `export_business`
turns the rows back into the same schema, so a file survives load -> import -> export unchanged.

Availability rules (weekly hours, overrides, time off) are validated by `booking.rules`, the same
models the scheduler expands, so a file that loads is a file the scheduler can use.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from booking import phones
from booking.db import session_scope
from booking.errors import InvalidRequest, NotFound
from booking.models import Business, Service, Staff
from booking.reminders import DEFAULT_QUIET, ReminderSettings, ServiceReminders, format_offset
from booking.rules import DAYS, MAX_TIME_OFF, Availability, Override, TimeOff, WeeklyHours
from booking.safe_load import MAX_BYTES, DocumentError, load_document
from booking.slots import MAX_BLOCK

EXTENSIONS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_Row = TypeVar("_Row", Service, Staff)


class BusinessFileError(Exception):
    """A business file that cannot be used; `problems` holds every `(path, reason)` found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" for path, reason in problems))


# --- field types --------------------------------------------------------------------------------


def _check_slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(f"{value!r} is not an id: use 1-64 lowercase letters, digits, '-' or '_'")
    return value


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone like 'America/New_York'") from None
    return value


def _phone_text(value: Any) -> Any:
    # YAML reads an unquoted +12025550100 as the integer 12025550100, dropping the plus.
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'quote phone numbers in YAML: write "+{value}", not {value}')
    return value


def _check_phone(value: str) -> str:
    # Stored in E.164; a number written without its country code is read as a US one.
    try:
        return phones.to_e164(value)
    except InvalidRequest as exc:
        raise ValueError(f"{exc}; write it in E.164, like '+12025550100'") from None


Slug = Annotated[str, AfterValidator(_check_slug)]
Zone = Annotated[str, AfterValidator(_check_zone)]
Phone = Annotated[str, BeforeValidator(_phone_text), AfterValidator(_check_phone)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Minutes = Annotated[int, Field(strict=True, gt=0)]
MAX_BLOCK_MINUTES = int(MAX_BLOCK.total_seconds() // 60)
NonNegativeMinutes = Annotated[int, Field(strict=True, ge=0)]


def _off(value: Any) -> Any:
    # `reminders: false` is short for `reminders: {enabled: false}`.
    return {"enabled": False} if value is False else value


# --- the schema ---------------------------------------------------------------------------------


class BusinessInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Slug
    name: Text
    timezone: Zone
    phone_numbers: list[Phone] = Field(default_factory=list)
    transfer_number: Phone | None = None
    greeting: Text | None = None
    policies: Text | None = None
    address: Text | None = None
    # When and what callers are reminded (default: 24 h and 2 h before); false: never.
    reminders: Annotated[ReminderSettings | None, BeforeValidator(_off)] = None


class ServiceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Slug
    name: Text
    duration_minutes: Minutes
    buffer_before_minutes: NonNegativeMinutes = 0
    buffer_after_minutes: NonNegativeMinutes = 0
    min_notice_minutes: NonNegativeMinutes = 0
    max_days_ahead: Annotated[int, Field(strict=True, ge=1, le=3660)] = 60  # ten years
    slot_step_minutes: Minutes = 15
    staff: Annotated[list[Slug], Field(min_length=1)]
    reminders: Annotated[ServiceReminders | None, BeforeValidator(_off)] = None  # else business's

    @model_validator(mode="after")
    def _fits_a_day(self) -> ServiceEntry:
        block = self.buffer_before_minutes + self.duration_minutes + self.buffer_after_minutes
        if block > MAX_BLOCK_MINUTES:
            raise ValueError("duration plus buffers must be at most 24 hours")
        return self


class CalendarLink(BaseModel):
    """A linked calendar: `provider` picks the implementation; its other keys are kept as given."""

    model_config = ConfigDict(extra="allow")
    provider: Slug

    @model_validator(mode="after")
    def _resolve_source(self, info: ValidationInfo) -> CalendarLink:
        extra = self.__pydantic_extra__ or {}
        source = extra.get("source")
        if isinstance(source, str):
            extra["source"] = _calendar_source(source, (info.context or {}).get("base_dir"))
        return self


def _calendar_source(source: str, base: str | None) -> str:
    """An http(s)/webcal address as given, or an .ics file inside the business file's folder.

    A relative path means "next to the business file", wherever the loader runs from; the file
    (symlinks and `..` resolved) must stay inside that folder, so a business file cannot point
    the calendar reader at /etc/passwd or a key file.
    """
    if _URL.match(source):
        if source.split(":", 1)[0].lower() not in ("http", "https", "webcal"):
            raise ValueError(
                f"source {source!r}: use an http(s) or webcal address, or an .ics "
                "file in the business file's folder"
            )
        return source
    if base is None:  # no file to be next to: a relative path that stays relative, as given
        path = os.path.normpath(source)
        if os.path.isabs(path) or path == ".." or path.startswith(f"..{os.sep}"):
            raise ValueError(f"source {source!r} is outside the business file's folder")
        real = path
    else:
        path = os.path.normpath(os.path.join(base, source))
        folder = os.path.realpath(base)
        real = os.path.realpath(path)
        if os.path.commonpath([real, folder]) != folder:
            raise ValueError(f"source {source!r} is outside the business file's folder {base}")
    if not (path.lower().endswith(".ics") and real.lower().endswith(".ics")):
        raise ValueError(f"source {source!r} is not an .ics file")
    # The resolved file, so the calendar reader later opens what was checked here, not whatever
    # a symlink on the way points at by then.
    return source if base is None else real


def _few_time_off(value: Any) -> Any:
    # Before the entries are validated: each recurring one costs a rule compile.
    if isinstance(value, list) and len(value) > MAX_TIME_OFF:
        raise ValueError(f"at most {MAX_TIME_OFF} time off entries, not {len(value)}")
    return value


class StaffEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Slug
    name: Text
    timezone: Zone | None = None
    weekly_hours: WeeklyHours = Field(default_factory=WeeklyHours)
    overrides: list[Override] = Field(default_factory=list)
    time_off: Annotated[list[TimeOff], BeforeValidator(_few_time_off)] = Field(default_factory=list)
    calendars: list[CalendarLink] = Field(default_factory=list)

    @field_validator("overrides")
    @classmethod
    def _one_override_per_date(cls, overrides: list[Override]) -> list[Override]:
        try:
            Availability(overrides=overrides)
        except ValidationError as exc:
            raise ValueError(_reason(exc.errors()[0])) from None
        return overrides


class BusinessFile(BaseModel):
    """A whole business file. Cross-references that fail raise `BusinessFileError` directly."""

    model_config = ConfigDict(extra="forbid")
    business: BusinessInfo
    services: list[ServiceEntry] = Field(default_factory=list)
    staff: list[StaffEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_references(self) -> BusinessFile:
        problems = [
            *_duplicates("services", [s.id for s in self.services]),
            *_duplicates("staff", [s.id for s in self.staff]),
        ]
        known = {s.id for s in self.staff}
        for i, service in enumerate(self.services):
            for j, staff_id in enumerate(service.staff):
                path = f"services[{i}].staff[{j}]"
                if staff_id not in known:
                    problems.append((path, f"no staff member with id {staff_id!r} in staff"))
                elif staff_id in service.staff[:j]:
                    problems.append((path, f"{staff_id!r} is listed twice"))
        if problems:
            # Not a ValueError: pydantic would fold it into one error without the paths.
            raise BusinessFileError(problems)
        return self


def _duplicates(section: str, ids: list[str]) -> list[tuple[str, str]]:
    out = []
    for i, value in enumerate(ids):
        if value in ids[:i]:
            first = ids.index(value)
            out.append((f"{section}[{i}].id", f"duplicate id {value!r} (also {section}[{first}])"))
    return out


# --- loading ------------------------------------------------------------------------------------


def parse_business(raw: Any, *, base_dir: str | Path | None = None) -> BusinessFile:
    """Validate an already-parsed document; relative calendar sources resolve against `base_dir`."""
    if not isinstance(raw, dict):
        raise BusinessFileError(
            [("(top level)", "expected a mapping with 'business', 'services' and 'staff'")]
        )
    context = {"base_dir": str(Path(base_dir).absolute())} if base_dir is not None else None
    try:
        return BusinessFile.model_validate(raw, context=context)
    except ValidationError as exc:
        raise BusinessFileError(
            [(_path(e["loc"]), _reason(e)) for e in exc.errors(include_url=False)]
        ) from None


def load_business_file(path: str | Path) -> BusinessFile:
    """Read and validate a business file (.yaml, .yml or .json); nothing touches the database."""
    path = Path(path)
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise BusinessFileError(
            [(str(path), f"unknown extension {path.suffix!r}: use .yaml, .yml or .json")]
        )
    try:
        if path.stat().st_size > MAX_BYTES:
            raise BusinessFileError([(str(path), f"larger than {MAX_BYTES:,} bytes")])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BusinessFileError([(str(path), f"cannot read the file: {_os_reason(exc)}")]) from None
    raw = _parse_text(text, "json" if fmt == "json" else "yaml", str(path))
    return parse_business(raw, base_dir=path.parent)


def _parse_text(text: str, fmt: Literal["yaml", "json"], source: str) -> Any:
    # Bounded: size, nesting and values (aliases counted at every use); see booking.safe_load.
    try:
        return load_document(text, fmt, source)
    except DocumentError as exc:
        raise BusinessFileError([(exc.where, exc.reason)]) from None


def _os_reason(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return exc.strerror or str(exc)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _reason(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


# --- import -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """Ids added, updated and removed in one table by an import."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


@dataclass(frozen=True)
class ImportResult:
    business_id: str
    created: bool
    business_updated: bool = False
    services: Changes = field(default_factory=Changes)
    staff: Changes = field(default_factory=Changes)

    @property
    def changed(self) -> bool:
        return self.created or self.business_updated or bool(self.services) or bool(self.staff)


def import_business(engine: Engine, data: BusinessFile) -> ImportResult:
    """Make the database match `data` in one write transaction; rows not in the file are deleted.

    Appointments keep their service and staff ids when those rows go: history is not rewritten.
    """
    info = data.business
    with session_scope(engine, write=True) as session:
        row = session.get(Business, info.id)
        created = row is None
        if row is None:
            row = Business(id=info.id, name=info.name, timezone=info.timezone)
            session.add(row)
        business_updated = _assign(row, _business_values(info)) and not created
        session.flush()
        services = _sync(session, Service, info.id, [_service_values(s) for s in data.services])
        staff = _sync(session, Staff, info.id, [staff_values(s) for s in data.staff])
    return ImportResult(info.id, created, business_updated, services, staff)


def _sync(
    session: Session, model: type[_Row], business_id: str, wanted: list[dict[str, Any]]
) -> Changes:
    existing = {row.id: row for row in _rows(session, model, business_id)}
    added, updated = [], []
    for position, values in enumerate(wanted):
        values["position"] = position
        row = existing.pop(values["id"], None)
        if row is None:
            session.add(model(business_id=business_id, **values))
            added.append(values["id"])
        elif _assign(row, values):
            updated.append(values["id"])
    for row in existing.values():
        session.delete(row)
    session.flush()
    return Changes(tuple(added), tuple(updated), tuple(sorted(existing)))


def _rows(session: Session, model: type[_Row], business_id: str) -> list[_Row]:
    query = select(model).where(model.business_id == business_id)
    return list(session.exec(query.order_by(col(model.position))))


def _assign(row: Any, values: dict[str, Any]) -> bool:
    changed = False
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed


def _business_values(info: BusinessInfo) -> dict[str, Any]:
    values = info.model_dump(exclude={"id", "reminders"})
    values["reminders"] = _reminders_json(info.reminders)
    return values


def _service_values(entry: ServiceEntry) -> dict[str, Any]:
    values = entry.model_dump(exclude={"staff", "reminders"})
    values["staff_ids"] = list(entry.staff)
    values["reminders"] = _reminders_json(entry.reminders)
    return values


def _reminders_json(value: ReminderSettings | ServiceReminders | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if value.enabled is False:
        return {"enabled": False}
    return value.model_dump(exclude_none=isinstance(value, ServiceReminders))


def _export_reminders(stored: dict[str, Any] | None) -> Any:
    """The file's `reminders:` for what is stored: defaults left out, times as "24h"."""
    if not stored:
        return None
    if stored == {"enabled": False}:
        return False
    defaults = ReminderSettings().model_dump()
    out: dict[str, Any] = {}
    for key, value in stored.items():
        if value is None and key != "quiet_hours":
            continue
        if key in defaults and defaults[key] == value and key != "enabled":
            continue
        if key == "enabled" and value is True:
            continue
        out[key] = [format_offset(m) for m in value] if key == "before" else value
    if out.get("quiet_hours", DEFAULT_QUIET) is None:
        out["quiet_hours"] = "off"
    return out or None


def staff_values(entry: StaffEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "timezone": entry.timezone,
        "weekly_hours": _weekly_json(entry.weekly_hours),
        "overrides": [o.model_dump(mode="json") for o in entry.overrides],
        "time_off": [_time_off_json(t) for t in entry.time_off],
        "calendars": [c.model_dump(mode="json") for c in entry.calendars],
    }


def _weekly_json(hours: WeeklyHours) -> dict[str, list[str]]:
    # Only the days worked, so a file that lists three days stores (and exports) three days.
    return {day: list(getattr(hours, day)) for day in DAYS if getattr(hours, day)}


def _time_off_json(entry: TimeOff) -> dict[str, Any]:
    values: dict[str, Any] = {"start": _when(entry.start), "end": _when(entry.end)}
    if entry.rrule is not None:
        values["rrule"] = entry.rrule
    if entry.reason is not None:
        values["reason"] = entry.reason
    return values


def _when(value: datetime) -> str:
    # Minutes are what people write; keep seconds only when the file had them.
    exact = value.second or value.microsecond
    return value.isoformat() if exact else value.isoformat(timespec="minutes")


# --- export -------------------------------------------------------------------------------------


def export_business(engine: Engine, business_id: str) -> dict[str, Any]:
    """The business as a file document (plain JSON types), defaults left out.

    Raises `booking.errors.NotFound` when there is no such business.
    """
    with session_scope(engine) as session:
        row = session.get(Business, business_id)
        if row is None:
            raise NotFound(f"no business {business_id!r}")
        return {
            "business": _export_info(row),
            "services": [_export_service(s) for s in _rows(session, Service, business_id)],
            "staff": [_export_staff(s) for s in _rows(session, Staff, business_id)],
        }


def _export_info(row: Business) -> dict[str, Any]:
    return _drop_empty(
        {
            "id": row.id,
            "name": row.name,
            "timezone": row.timezone,
            "phone_numbers": list(row.phone_numbers),
            "transfer_number": row.transfer_number,
            "greeting": row.greeting,
            "policies": row.policies,
            "address": row.address,
            "reminders": _export_reminders(row.reminders),
        }
    )


_SERVICE_DEFAULTS = {
    name: info.default
    for name, info in ServiceEntry.model_fields.items()
    if name not in {"id", "name", "duration_minutes", "staff", "reminders"}
}


def _export_service(row: Service) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row.id, "name": row.name, "duration_minutes": row.duration_minutes}
    for name, default in _SERVICE_DEFAULTS.items():
        if getattr(row, name) != default:
            out[name] = getattr(row, name)
    out["staff"] = list(row.staff_ids)
    reminders = _export_reminders(row.reminders)
    if reminders is not None:
        out["reminders"] = reminders
    return out


def _export_staff(row: Staff) -> dict[str, Any]:
    weekly = {day: list(row.weekly_hours[day]) for day in DAYS if row.weekly_hours.get(day)}
    return _drop_empty(
        {
            "id": row.id,
            "name": row.name,
            "timezone": row.timezone,
            "weekly_hours": weekly,
            "overrides": [dict(o) for o in row.overrides],
            "time_off": [dict(t) for t in row.time_off],
            "calendars": [dict(c) for c in row.calendars],
        }
    )


def _drop_empty(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value not in (None, [], {})}


# --- dumping ------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style for structure, flow style for short lists, `|` blocks for multi-line text."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def dump_business(data: dict[str, Any], fmt: Literal["yaml", "json"]) -> str:
    """Text of an exported business document in `fmt`."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    if fmt == "yaml":
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    raise ValueError(f"unknown format {fmt!r}: use 'yaml' or 'json'")


def _json_default(value: Any) -> str:
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
