"""The business file: loading and validation, import into the database, export and round trip."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from booking.business_file import (
    BusinessFile,
    BusinessFileError,
    dump_business,
    export_business,
    import_business,
    load_business_file,
    parse_business,
)
from booking.clock import FixedClock
from booking.db import make_engine, migrate, session_scope
from booking.errors import NotFound
from booking.models import Appointment, Business, Contact, Service, Staff
from booking.scheduler import Scheduler

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-business.yaml"
Raw = dict[str, Any]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def raw() -> Raw:
    """The demo document as YAML parsed it (dates are `date` objects), ready to be edited."""
    return yaml.safe_load(DEMO.read_text(encoding="utf-8"))


@pytest.fixture
def demo() -> BusinessFile:
    return load_business_file(DEMO)


def write(path: Path, raw: Raw) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(raw, default=str), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def rows(engine: Engine, model: type[Service] | type[Staff]) -> dict[str, Any]:
    with session_scope(engine) as s:
        return {r.id: r for r in s.exec(select(model).order_by(model.position))}


def problems_of(raw: Raw) -> list[tuple[str, str]]:
    with pytest.raises(BusinessFileError) as caught:
        parse_business(raw)
    return caught.value.problems


# --- loading ------------------------------------------------------------------------------------


def test_demo_file_loads(demo: BusinessFile) -> None:
    assert demo.business.id == "bright-smile"
    assert demo.business.timezone == "America/New_York"
    assert demo.business.phone_numbers == ["+12025550100"]
    assert demo.business.transfer_number == "+12025550199"
    assert demo.business.greeting and demo.business.policies
    assert [s.id for s in demo.services] == ["cleaning", "checkup", "whitening"]
    assert [s.id for s in demo.staff] == ["lee", "patel", "sam"]
    lee, patel, sam = demo.staff
    assert lee.weekly_hours.mon == ["09:00-12:00", "13:00-17:00"]
    assert lee.overrides[0].date == date(2026, 12, 24) and lee.overrides[0].hours == []
    assert lee.time_off[1].rrule == "FREQ=WEEKLY;INTERVAL=2;BYDAY=FR"
    assert patel.timezone is None and sam.timezone == "America/Chicago"
    whitening = demo.services[2]
    assert whitening.buffer_before_minutes == 10 and whitening.buffer_after_minutes == 0


def test_relative_calendar_sources_resolve_next_to_the_file(demo: BusinessFile) -> None:
    link = demo.staff[0].calendars[0]
    assert link.provider == "ics"
    # Stored resolved: examples/ is a symlink to frontdesk/demo/.
    assert link.model_extra == {"source": os.path.realpath(DEMO.parent / "calendars/lee.ics")}


def test_urls_and_other_calendar_keys_are_kept_as_given(tmp_path: Path, raw: Raw) -> None:
    raw["staff"][0]["calendars"] = [
        {"provider": "ics", "source": "https://example.com/lee.ics", "refresh_minutes": 5},
        {"provider": "google", "calendar_id": "lee@example.com"},
    ]
    loaded = load_business_file(write(tmp_path / "b.yaml", raw))
    dumped = [c.model_dump() for c in loaded.staff[0].calendars]
    assert dumped == raw["staff"][0]["calendars"]


def test_yaml_dates_datetimes_and_unquoted_ranges_all_load(tmp_path: Path) -> None:
    text = """
business: {id: b1, name: B, timezone: Europe/Paris}
staff:
  - id: ann
    name: Ann
    weekly_hours: {mon: [09:00-12:00, 13:00-17:30]}
    overrides: [{date: 2026-12-24, hours: [10:00-12:00]}]
    time_off:
      - {start: 2026-12-28 00:00:00, end: 2027-01-02T00:00:00}
      - {start: 2027-02-01T09:00:00+01:00, end: "2027-02-01T10:00+01:00"}
      - {start: "2027-03-01T09:00", end: "2027-03-01T10:00"}
services:
  - {id: s1, name: S, duration_minutes: 30, staff: [ann]}
"""
    path = tmp_path / "b.yml"
    path.write_text(text, encoding="utf-8")
    ann = load_business_file(path).staff[0]
    assert ann.weekly_hours.mon == ["09:00-12:00", "13:00-17:30"]
    assert ann.overrides[0].date == date(2026, 12, 24)
    assert ann.time_off[0].start == datetime(2026, 12, 28)
    plus_one = timezone(timedelta(hours=1))
    assert ann.time_off[1].start == datetime(2027, 2, 1, 9, tzinfo=plus_one)
    assert ann.time_off[2].end == datetime(2027, 3, 1, 10)


def test_json_and_yaml_files_load_the_same(tmp_path: Path, raw: Raw) -> None:
    from_yaml = load_business_file(write(tmp_path / "b.yaml", raw))
    from_json = load_business_file(write(tmp_path / "b.json", raw))
    assert from_yaml == from_json


def test_service_defaults_apply(raw: Raw) -> None:
    raw["services"] = [{"id": "quick", "name": "Quick", "duration_minutes": 10, "staff": ["lee"]}]
    service = parse_business(raw).services[0]
    assert (service.buffer_before_minutes, service.buffer_after_minutes) == (0, 0)
    assert (service.min_notice_minutes, service.max_days_ahead) == (0, 60)
    assert service.slot_step_minutes == 15


# --- errors -------------------------------------------------------------------------------------


def _set(*path: str | int, value: Any) -> Callable[[Raw], None]:
    def edit(raw: Raw) -> None:
        target: Any = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _append(*path: str | int, value: Any) -> Callable[[Raw], None]:
    def edit(raw: Raw) -> None:
        target: Any = raw
        for key in path:
            target = target[key]
        target.append(copy.deepcopy(value))

    return edit


BAD_FILES = {
    "bad business timezone": (
        _set("business", "timezone", value="America/Springfield"),
        "business.timezone",
        "IANA time zone",
    ),
    "bad staff timezone": (
        _set("staff", 2, "timezone", value="Central"),
        "staff[2].timezone",
        "IANA time zone",
    ),
    "bad phone": (
        _set("business", "phone_numbers", value=["+12025550100", "555-0100"]),
        "business.phone_numbers[1]",
        "E.164",
    ),
    "unquoted phone": (
        _set("business", "transfer_number", value=12025550199),
        "business.transfer_number",
        'write "+12025550199"',
    ),
    "range 9-5": (
        _set("staff", 0, "weekly_hours", "mon", 1, value="9-5"),
        "staff[0].weekly_hours.mon[1]",
        "not a range like",
    ),
    "overlapping ranges": (
        _set("staff", 1, "weekly_hours", "wed", value=["10:00-13:00", "12:00-18:00"]),
        "staff[1].weekly_hours.wed",
        "overlap",
    ),
    "range ends before it starts": (
        _set("staff", 0, "weekly_hours", "tue", 0, value="17:00-09:00"),
        "staff[0].weekly_hours.tue[0]",
        "ends before it starts",
    ),
    "time off ends before it starts": (
        _set("staff", 0, "time_off", 0, "end", value="2026-12-24T00:00"),
        "staff[0].time_off[0]",
        "end must be after start",
    ),
    "invalid rrule": (
        _set("staff", 0, "time_off", 1, "rrule", value="FREQ=FORTNIGHTLY;BYDAY=FR"),
        "staff[0].time_off[1].rrule",
        "FREQ=FORTNIGHTLY is not one of DAILY, WEEKLY, MONTHLY, YEARLY",
    ),
    # Recurring time off that would make every slot search expand millions of instances.
    "minutely time off": (
        _set("staff", 0, "time_off", 1, "rrule", value="FREQ=MINUTELY"),
        "staff[0].time_off[1].rrule",
        "FREQ=MINUTELY repeats more often than daily",
    ),
    "secondly time off": (
        _set("staff", 0, "time_off", 1, "rrule", value="FREQ=SECONDLY;INTERVAL=1"),
        "staff[0].time_off[1].rrule",
        "FREQ=SECONDLY repeats more often than daily",
    ),
    "hourly time off": (
        _set("staff", 0, "time_off", 1, "rrule", value="FREQ=HOURLY"),
        "staff[0].time_off[1].rrule",
        "FREQ=HOURLY repeats more often than daily",
    ),
    "daily time off every minute": (
        _set("staff", 0, "time_off", 1, "rrule", value="FREQ=DAILY;BYMINUTE=0,15,30,45"),
        "staff[0].time_off[1].rrule",
        "BYMINUTE=0,15,30,45 repeats more often than daily",
    ),
    "time off count too large": (
        _set("staff", 0, "time_off", 1, "rrule", value="FREQ=DAILY;COUNT=10001"),
        "staff[0].time_off[1].rrule",
        "COUNT=10001 is more than 10000",
    ),
    "time off until the year 2300": (
        _set("staff", 0, "time_off", 1, "rrule", value="FREQ=WEEKLY;UNTIL=23000101"),
        "staff[0].time_off[1].rrule",
        "outside the years 1970-2199",
    ),
    "time off from the year 1900": (
        _set("staff", 0, "time_off", 1, "start", value="1900-01-05T13:00"),
        "staff[0].time_off[1].start",
        "outside the years 1970-2199",
    ),
    "time off in the year 9999": (
        _set("staff", 0, "time_off", 0, "end", value="9999-12-31T23:59:59"),
        "staff[0].time_off[0].end",
        "outside the years 1970-2199",
    ),
    "horizon past the calendar": (
        _set("services", 0, "max_days_ahead", value=10**9),
        "services[0].max_days_ahead",
        "less than or equal to 3660",
    ),
    "two overrides for one date": (
        _append("staff", 0, "overrides", value={"date": date(2026, 12, 24), "hours": []}),
        "staff[0].overrides",
        "more than one override for 2026-12-24",
    ),
    "unknown staff in a service": (
        _set("services", 1, "staff", value=["lee", "smith"]),
        "services[1].staff[1]",
        "no staff member with id 'smith'",
    ),
    "staff listed twice in a service": (
        _set("services", 1, "staff", value=["lee", "lee"]),
        "services[1].staff[1]",
        "'lee' is listed twice",
    ),
    "duplicate service id": (
        _set("services", 2, "id", value="cleaning"),
        "services[2].id",
        "duplicate id 'cleaning' (also services[0])",
    ),
    "duplicate staff id": (
        _append("staff", value={"id": "lee", "name": "Dr. Lee Jr."}),
        "staff[3].id",
        "duplicate id 'lee' (also staff[0])",
    ),
    "unknown key": (
        _set("services", 0, "duration", value=30),
        "services[0].duration",
        "unknown key",
    ),
    "id that is not a slug": (
        _set("services", 0, "id", value="Deep Clean"),
        "services[0].id",
        "not an id",
    ),
    "zero duration": (
        _set("services", 1, "duration_minutes", value=0),
        "services[1].duration_minutes",
        "greater than 0",
    ),
    "negative buffer": (
        _set("services", 0, "buffer_after_minutes", value=-5),
        "services[0].buffer_after_minutes",
        "greater than or equal to 0",
    ),
    "zero days ahead": (
        _set("services", 0, "max_days_ahead", value=0),
        "services[0].max_days_ahead",
        "greater than or equal to 1",
    ),
    "service without staff": (
        _set("services", 0, "staff", value=[]),
        "services[0].staff",
        "at least 1",
    ),
    "calendar without provider": (
        _set("staff", 1, "calendars", 0, value={"source": "./x.ics"}),
        "staff[1].calendars[0].provider",
        "required",
    ),
    "missing name": (lambda raw: raw["staff"][1].pop("name"), "staff[1].name", "required"),
    "too much time off": (
        _set(
            "staff",
            0,
            "time_off",
            value=[
                {
                    "start": "2026-12-25T00:00",
                    "end": "2026-12-26T00:00",
                    "rrule": "FREQ=YEARLY;BYDAY=53MO,53TU,53WE,53TH,53FR,53SA,53SU;COUNT=10000",
                }
            ]
            * 101,
        ),
        "staff[0].time_off",
        "at most 100 time off entries, not 101",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_errors_name_the_path_and_the_reason(raw: Raw, case: str) -> None:
    edit, path, reason = BAD_FILES[case]
    edit(raw)
    problems = problems_of(raw)
    assert [p for p, _ in problems] == [path]
    assert reason in problems[0][1]


def test_every_problem_is_listed_one_per_line(raw: Raw) -> None:
    raw["business"]["timezone"] = "Mars/Olympus"
    raw["staff"][0]["weekly_hours"]["mon"][0] = "9-12"
    raw["services"][0]["colour"] = "blue"
    with pytest.raises(BusinessFileError) as caught:
        parse_business(raw)
    error = caught.value
    assert {p for p, _ in error.problems} == {
        "business.timezone",
        "staff[0].weekly_hours.mon[0]",
        "services[0].colour",
    }
    assert str(error).splitlines() == [f"{p}: {r}" for p, r in error.problems]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("business:\n  id: b1\n  name: [unclosed\nstaff: []\n", encoding="utf-8")
    with pytest.raises(BusinessFileError) as caught:
        load_business_file(path)
    [(where, reason)] = caught.value.problems
    assert where == f"{path}:4"
    assert reason.startswith("invalid YAML")


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{\n  "business": {\n    "id": "b1",\n  }\n}\n', encoding="utf-8")
    with pytest.raises(BusinessFileError) as caught:
        load_business_file(path)
    [(where, reason)] = caught.value.problems
    assert where == f"{path}:4"
    assert reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("b.toml", "x = 1", "unknown extension '.toml'"),
        ("missing.yaml", None, "cannot read the file"),
        ("latin1.yaml", "name: caf\xe9".encode("latin-1"), "not UTF-8"),
        ("list.yaml", "- just\n- a list\n", "expected a mapping"),
        ("empty.yaml", "", "expected a mapping"),
    ],
)
def test_unusable_files_raise_business_file_error(
    tmp_path: Path, name: str, content: str | bytes | None, reason: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(BusinessFileError) as caught:
        load_business_file(path)
    assert reason in str(caught.value)


# --- import -------------------------------------------------------------------------------------


def test_import_creates_the_rows(db: Engine, demo: BusinessFile) -> None:
    result = import_business(db, demo)
    assert result.created and result.changed
    assert result.services.added == ("cleaning", "checkup", "whitening")
    assert result.staff.added == ("lee", "patel", "sam")

    with session_scope(db) as s:
        business = s.get(Business, "bright-smile")
    assert business is not None
    assert business.phone_numbers == ["+12025550100"]
    assert business.transfer_number == "+12025550199"

    services = rows(db, Service)
    assert list(services) == ["cleaning", "checkup", "whitening"]
    assert [s.position for s in services.values()] == [0, 1, 2]
    cleaning = services["cleaning"]
    assert (cleaning.duration_minutes, cleaning.buffer_after_minutes) == (45, 15)
    assert cleaning.staff_ids == ["sam", "lee", "patel"]

    staff = rows(db, Staff)
    assert list(staff) == ["lee", "patel", "sam"]
    lee = staff["lee"]
    assert lee.weekly_hours["fri"] == ["09:00-12:00", "13:00-17:00"]
    assert "sat" not in lee.weekly_hours
    assert lee.overrides == [{"date": "2026-12-24", "hours": []}]
    assert lee.time_off[1]["rrule"] == "FREQ=WEEKLY;INTERVAL=2;BYDAY=FR"
    lee_ics = os.path.realpath(DEMO.parent / "calendars/lee.ics")
    assert lee.calendars == [{"provider": "ics", "source": lee_ics}]
    assert staff["patel"].timezone is None and staff["sam"].timezone == "America/Chicago"


async def test_imported_business_is_bookable(db: Engine, demo: BusinessFile) -> None:
    import_business(db, demo)
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # Monday, 06:00 in Chicago
    scheduler = Scheduler(engine=db, clock=FixedClock(now))
    tuesday = date(2026, 12, 1)
    found = await scheduler.availability(
        business_id="bright-smile",
        service_id="cleaning",
        staff_id="sam",
        first_day=tuesday,
        last_day=tuesday,
    )
    chicago = ZoneInfo("America/Chicago")
    starts = [slot.start.astimezone(chicago).strftime("%H:%M") for slot in found.slots]
    # Sam's hours are Chicago time (08:00 in New York); the last cleaning ends at 11:30 lunch.
    assert starts[0] == "07:00" and "10:45" in starts and "11:00" not in starts
    assert starts[-1] == "14:15"


def test_importing_twice_changes_nothing(db: Engine, demo: BusinessFile) -> None:
    import_business(db, demo)
    before = export_business(db, "bright-smile")
    again = import_business(db, demo)
    assert not again.created and not again.changed
    assert export_business(db, "bright-smile") == before


def test_edited_file_updates_rows_in_place(db: Engine, tmp_path: Path, raw: Raw) -> None:
    import_business(db, load_business_file(write(tmp_path / "b.yaml", raw)))
    with session_scope(db, write=True) as s:
        s.add(Contact(id="ct_1", business_id="bright-smile", phone="+12025550001"))
        s.flush()
        start = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
        end = start + timedelta(minutes=45)
        s.add(
            Appointment(
                id="apt_1",
                business_id="bright-smile",
                service_id="cleaning",
                staff_id="sam",
                contact_id="ct_1",
                start=start,
                end=end,
                block_start=start,
                block_end=end + timedelta(minutes=15),
            )
        )

    raw["services"][0]["name"] = "Cleaning and polish"
    raw["services"][0]["staff"] = ["lee", "patel"]
    raw["staff"][0]["weekly_hours"]["fri"] = ["09:00-13:00"]
    del raw["staff"][2]
    raw["business"]["greeting"] = "Hello from Bright Smile!"
    result = import_business(db, load_business_file(write(tmp_path / "b.yaml", raw)))

    assert not result.created and result.business_updated
    assert result.services.updated == ("cleaning",) and not result.services.added
    assert result.staff.updated == ("lee",) and result.staff.removed == ("sam",)
    services, staff = rows(db, Service), rows(db, Staff)
    assert services["cleaning"].name == "Cleaning and polish"
    assert services["cleaning"].staff_ids == ["lee", "patel"]
    assert list(staff) == ["lee", "patel"]
    assert staff["lee"].weekly_hours["fri"] == ["09:00-13:00"]
    with session_scope(db) as s:
        appointment = s.get(Appointment, "apt_1")
        greeting = s.get(Business, "bright-smile").greeting  # type: ignore[union-attr]
    assert appointment is not None and appointment.staff_id == "sam"
    assert greeting == "Hello from Bright Smile!"


def test_reordering_the_file_reorders_the_rows(db: Engine, raw: Raw) -> None:
    import_business(db, parse_business(raw))
    raw["services"].reverse()
    result = import_business(db, parse_business(raw))
    assert set(result.services.updated) == {"cleaning", "whitening"}
    assert list(rows(db, Service)) == ["whitening", "checkup", "cleaning"]


def test_failed_import_leaves_the_database_untouched(db: Engine, demo: BusinessFile) -> None:
    import_business(db, demo)
    before = export_business(db, "bright-smile")

    renamed = demo.services[0].model_copy(update={"name": "Renamed"})
    # Valid up to the last staff row, which the database refuses: nothing may stick.
    broken = demo.staff[2].model_copy(update={"name": None})
    edited = demo.model_copy(
        update={
            "services": [renamed, *demo.services[1:]],
            "staff": [*demo.staff[:2], broken],
        }
    )
    with pytest.raises(IntegrityError):
        import_business(db, edited)
    assert export_business(db, "bright-smile") == before


def test_failed_first_import_creates_no_business(db: Engine, demo: BusinessFile) -> None:
    broken = demo.staff[0].model_copy(update={"name": None})
    with pytest.raises(IntegrityError):
        import_business(db, demo.model_copy(update={"staff": [broken, *demo.staff[1:]]}))
    with session_scope(db) as s:
        assert s.get(Business, "bright-smile") is None
        assert s.exec(select(Service)).all() == []


# --- export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_export_round_trips(db: Engine, tmp_path: Path, fmt: str) -> None:
    # A calendar file must lie in the business file's folder: the demo and its calendars are
    # copied, and the export is written next to them.
    shutil.copytree(DEMO.parent / "calendars", tmp_path / "calendars")
    shutil.copy(DEMO, tmp_path / DEMO.name)
    demo = load_business_file(tmp_path / DEMO.name)
    import_business(db, demo)
    exported = export_business(db, "bright-smile")
    path = tmp_path / f"exported.{fmt}"
    path.write_text(dump_business(exported, fmt), encoding="utf-8")  # type: ignore[arg-type]
    assert load_business_file(path) == demo


def test_export_leaves_out_defaults(db: Engine, demo: BusinessFile) -> None:
    import_business(db, demo)
    exported = export_business(db, "bright-smile")
    checkup = exported["services"][1]
    assert set(checkup) == {
        "id",
        "name",
        "duration_minutes",
        "min_notice_minutes",
        "slot_step_minutes",
        "staff",
    }
    sam = exported["staff"][2]
    assert set(sam) == {"id", "name", "timezone", "weekly_hours"}
    assert list(sam["weekly_hours"]) == ["tue", "wed", "fri"]
    assert exported["staff"][0]["time_off"][0]["start"] == "2026-12-25T00:00"


def test_exported_yaml_is_readable(db: Engine, demo: BusinessFile) -> None:
    import_business(db, demo)
    text = dump_business(export_business(db, "bright-smile"), "yaml")
    assert "mon: ['09:00-12:00', '13:00-17:00']" in text
    assert "policies: |-\n    Address:" in text


def test_exporting_an_unknown_business_is_not_found(db: Engine) -> None:
    with pytest.raises(NotFound):
        export_business(db, "nobody")


# ---- hostile files: bombs, deep nesting, size, and calendar files outside the folder -------

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def merge_bomb() -> str:
    # Merge keys: PyYAML copies every merged pair while it builds, 10 times more each level.
    lines = ["k0: &k0 {" + ", ".join(f"x{i}: {i}" for i in range(10)) + "}"]
    for level in range(1, 9):
        merged = ", ".join([f"*k{level - 1}"] * 10)
        lines.append(f"k{level}: &k{level} {{<<: [{merged}], y{level}: 1}}")
    return "\n".join(lines) + "\n"


def one_problem(path: Path) -> tuple[str, str]:
    with pytest.raises(BusinessFileError) as caught:
        load_business_file(path)
    assert len(caught.value.problems) == 1 and "\n" not in str(caught.value)
    return caught.value.problems[0]


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(raw: Raw, tmp_path: Path) -> None:
    # The bomb inside a calendar entry, whose unknown keys are kept as given.
    raw["staff"][0]["calendars"] = [
        {"provider": "ics", "source": "https://x.example/a.ics", "extra": "BOMB_HERE"}
    ]
    text = write(tmp_path / "b.yaml", raw).read_text(encoding="utf-8")
    bomb = BOMB + text.replace("BOMB_HERE", "*i")
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb, encoding="utf-8")
    assert len(bomb.encode()) < 10_000
    t0 = time.perf_counter()
    where, reason = one_problem(path)
    assert time.perf_counter() - t0 < 2.0  # ran until 6 GB of memory were gone
    assert where == str(path) and "more than 100,000 values" in reason and "alias" in reason
    assert "Traceback" not in reason


def test_a_merge_key_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(merge_bomb(), encoding="utf-8")
    assert "more than 100,000 values" in one_problem(path)[1]


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", "[" * 20_000 + "]" * 20_000),
        (".yaml", "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200))),
        (".json", "[" * 20_000 + "]" * 20_000),
        (".json", "[" * 500 + "]" * 500),
    ],
)
def test_deep_nesting_is_one_line_not_a_recursion_error(
    suffix: str, text: str, tmp_path: Path
) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text(text, encoding="utf-8")
    assert "nested more than 50 levels deep" in one_problem(path)[1]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_file_over_a_megabyte_is_refused(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"big{suffix}"
    path.write_text('{"business": "' + "x" * 1_000_001 + '"}', encoding="utf-8")
    assert one_problem(path) == (str(path), "larger than 1,000,000 bytes")


def test_the_cli_import_reports_a_bomb_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from frontdesk.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    code = main(["import", str(path)])
    err = capsys.readouterr().err
    assert code != 0 and "more than 100,000 values" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def with_source(raw: Raw, source: str) -> Raw:
    raw["staff"][0]["calendars"] = [{"provider": "ics", "source": source}]
    return raw


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("/etc/passwd", "is outside the business file's folder"),
        ("../outside.ics", "is outside the business file's folder"),
        ("~/.ssh/id_ed25519", "is not an .ics file"),
        ("notes.txt", "is not an .ics file"),
        ("file:///etc/passwd", "use an http(s) or webcal address"),
        ("ftp://example.com/a.ics", "use an http(s) or webcal address"),
    ],
)
def test_a_calendar_file_must_be_an_ics_file_in_the_folder(
    raw: Raw, tmp_path: Path, source: str, reason: str
) -> None:
    folder = tmp_path / "biz"
    folder.mkdir()
    (tmp_path / "outside.ics").write_bytes(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")
    path = write(folder / "b.yaml", with_source(raw, source))
    where, why = one_problem(path)
    assert where == "staff[0].calendars[0]" and reason in why


def test_a_symlink_out_of_the_folder_is_refused(raw: Raw, tmp_path: Path) -> None:
    folder = tmp_path / "biz"
    folder.mkdir()
    (folder / "lee.ics").symlink_to("/etc/passwd")
    path = write(folder / "b.yaml", with_source(raw, "lee.ics"))
    assert "is outside the business file's folder" in one_problem(path)[1]


@pytest.mark.parametrize(
    "source",
    [
        "cal/lee.ics",
        "./cal/../cal/lee.ics",
        "https://calendar.example/lee.ics",
        "webcal://calendar.example/lee.ics",
    ],
)
def test_files_in_the_folder_and_feeds_are_accepted(raw: Raw, tmp_path: Path, source: str) -> None:
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "lee.ics").write_bytes(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")
    data = load_business_file(write(tmp_path / "b.yaml", with_source(raw, source)))
    stored = data.staff[0].calendars[0].model_extra or {}
    expected = source if "://" in source else os.path.realpath(tmp_path / "cal" / "lee.ics")
    assert stored["source"] == expected


def test_a_file_source_is_stored_resolved(raw: Raw, tmp_path: Path) -> None:
    # The reader later opens the checked file, not whatever the link points at by then.
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "2026.ics").write_bytes(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")
    (tmp_path / "lee.ics").symlink_to(tmp_path / "cal" / "2026.ics")
    data = load_business_file(write(tmp_path / "b.yaml", with_source(raw, "lee.ics")))
    stored = data.staff[0].calendars[0].model_extra or {}
    assert stored["source"] == os.path.realpath(tmp_path / "cal" / "2026.ics")


# --- reminders ----------------------------------------------------------------------------------


def test_reminder_settings_load_import_and_export(db: Engine, demo: BusinessFile) -> None:
    assert demo.business.reminders is not None and demo.business.reminders.before == [1440, 120]
    import_business(db, demo)
    with session_scope(db) as s:
        business = s.get(Business, "bright-smile")
        whitening = s.get(Service, ("bright-smile", "whitening"))
        assert business is not None and whitening is not None
        assert business.address == "214 Maple Avenue, Suite 3, Springfield"
        assert business.reminders is not None and business.reminders["before"] == [1440, 120]
        assert whitening.reminders == {"before": [2880, 120]}
    exported = export_business(db, "bright-smile")
    # The default times and quiet hours are left out; the wording is kept.
    assert set(exported["business"]["reminders"]) == {"text"}
    assert exported["services"][2]["reminders"] == {"before": ["48h", "2h"]}


def test_reminders_can_be_turned_off(raw: Raw) -> None:
    raw["business"]["reminders"] = False
    raw["services"][0]["reminders"] = {"enabled": True, "before": "3h"}
    raw["services"][1]["reminders"] = False
    parsed = parse_business(raw)
    assert parsed.business.reminders is not None and not parsed.business.reminders.enabled
    first, second = parsed.services[0].reminders, parsed.services[1].reminders
    assert first is not None and first.before == [180]
    assert second is not None and second.enabled is False


@pytest.mark.parametrize(
    ("where", "value", "reason"),
    [
        ("business", {"before": ["soon"]}, "not a time before the appointment"),
        ("business", {"text": "Hi {patient}"}, "unknown placeholder {patient}"),
        ("business", {"quiet_hours": "late"}, "not quiet hours"),
        ("service", {"before": ["40d"]}, "between 1 minute and 30 days"),
        ("service", {"sound": "ding"}, "unknown key"),
    ],
)
def test_bad_reminder_settings_name_their_path(
    raw: Raw, where: str, value: object, reason: str
) -> None:
    if where == "business":
        raw["business"]["reminders"] = value
    else:
        raw["services"][0]["reminders"] = value
    found = problems_of(raw)
    assert any(
        path.startswith(f"{'business' if where == 'business' else 'services[0]'}")
        and reason in text
        for path, text in found
    ), found
