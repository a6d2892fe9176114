"""`frontdesk keygen` and `frontdesk calendars ...` as a user types them, against Radicale."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from caldav.davclient import DAVClient
from cryptography.fernet import Fernet

from frontdesk.cli import main
from tests.calendars.radicale_server import PASSWORD, USERNAME, RadicaleServer, start_radicale

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-business.yaml"


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadicaleServer]:
    server = start_radicale(tmp_path_factory.mktemp("radicale"))
    client = DAVClient(
        url=server.principal_url, username=USERNAME, password=PASSWORD, enable_rfc6764=False
    )
    principal = client.principal()  # type: ignore[no-untyped-call]  # caldav is not typed here
    calendar = principal.make_calendar(name="Work", cal_id="work")
    principal.make_calendar(name="Family", cal_id="family")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    calendar.save_event(
        dtstart=start, dtend=start + timedelta(hours=1), summary="Dentist", uid="busy-1"
    )
    client.close()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("FRONTDESK_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("FRONTDESK_CALENDAR_TIMEOUT_SECONDS", "10")
    monkeypatch.setenv("FRONTDESK_ALLOW_PRIVATE_URLS", "true")  # Radicale runs on loopback
    for name in (
        "FRONTDESK_SECRET_KEY",
        "FRONTDESK_GOOGLE_CLIENT_ID",
        "FRONTDESK_GOOGLE_CLIENT_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    return db


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def link_caldav(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    radicale: RadicaleServer,
    password: str,
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    return run(
        capsys,
        "calendars",
        "link",
        "caldav",
        "--staff",
        "lee",
        "--url",
        radicale.principal_url,
        "--username",
        USERNAME,
        "--password-stdin",
    )


def test_keygen_prints_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keygen")
    assert code == 0
    Fernet(out.strip().encode())  # a valid key, or this raises


def test_linking_needs_the_secret_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, radicale: RadicaleServer
) -> None:
    run(capsys, "import", str(DEMO))
    code, _, err = link_caldav(capsys, monkeypatch, radicale, PASSWORD)
    assert code == 1 and "FRONTDESK_SECRET_KEY" in err
    assert run(capsys, "calendars", "list")[1] == "no linked calendars\n"


def test_link_list_and_unlink_a_caldav_account(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    radicale: RadicaleServer,
    database: Path,
) -> None:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    run(capsys, "import", str(DEMO))

    code, _, err = link_caldav(capsys, monkeypatch, radicale, "wrong-password")
    assert code == 1 and "error:" in err and "wrong-password" not in err

    code, out, err = link_caldav(capsys, monkeypatch, radicale, PASSWORD)
    assert code == 0, err
    assert "linked" in out and PASSWORD not in out
    code, out, _ = run(capsys, "calendars", "list", "--json")
    [row] = json.loads(out)
    assert row["provider"] == "caldav" and row["staff"] == "lee" and row["status"] == "ok"
    assert row["synced_at"] and row["write_calendar"]
    assert PASSWORD not in out

    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT secret FROM calendarconnection")).scalar_one()
        cached = conn.execute(sa.text("SELECT count(*) FROM calendar_busy")).scalar_one()
    engine.dispose()
    assert PASSWORD not in stored  # encrypted at rest
    assert cached == 1  # the Dentist appointment, in the busy cache at once

    code, out, _ = run(capsys, "calendars", "show", row["id"])
    assert code == 0 and "Work" in out

    assert run(capsys, "calendars", "sync")[0] == 0
    assert run(capsys, "calendars", "unlink", row["id"])[0] == 0
    assert run(capsys, "calendars", "list")[1] == "no linked calendars\n"


def test_oauth_providers_say_when_they_are_not_configured(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    run(capsys, "import", str(DEMO))
    code, _, err = run(capsys, "calendars", "link", "google", "--staff", "lee")
    assert code == 1 and "FRONTDESK_GOOGLE_CLIENT_ID" in err


def test_private_addresses_are_refused_unless_allowed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, radicale: RadicaleServer
) -> None:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("FRONTDESK_ALLOW_PRIVATE_URLS", "false")
    run(capsys, "import", str(DEMO))
    code, _, err = link_caldav(capsys, monkeypatch, radicale, PASSWORD)
    assert code == 1 and "private or local address" in err
    code, _, err = run(
        capsys,
        "calendars",
        "link",
        "ics",
        "--staff",
        "lee",
        "--source",
        "http://169.254.169.254/latest/meta-data/",
    )
    assert code == 1 and "private or local address" in err


def test_sync_refreshes_at_once_and_says_what_changed(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    radicale: RadicaleServer,
    database: Path,
) -> None:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    run(capsys, "import", str(DEMO))
    assert link_caldav(capsys, monkeypatch, radicale, PASSWORD)[0] == 0
    [row] = json.loads(run(capsys, "calendars", "list", "--json")[1])

    # The staff member adds an event on their phone, seconds after the link read the calendar.
    client = DAVClient(
        url=radicale.principal_url, username=USERNAME, password=PASSWORD, enable_rfc6764=False
    )
    work = client.calendar(url=f"{radicale.principal_url}work/")  # type: ignore[no-untyped-call]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    work.save_event(dtstart=start, dtend=start + timedelta(hours=2), summary="Gym", uid="gym-1")
    try:
        code, out, err = run(capsys, "calendars", "sync")
        assert code == 0, err
        assert out == f"{row['id']}  lee  caldav  {row['name']}: 1 busy interval added\n"
        engine = sa.create_engine(f"sqlite:///{database}")
        with engine.connect() as conn:
            spans = conn.execute(sa.text('SELECT start, "end" FROM calendar_busy')).all()
        engine.dispose()
        assert len(spans) == 2
        assert any(
            sa_start.startswith(start.strftime("%Y-%m-%d %H:%M")) for sa_start, _ in spans
        ), spans

        code, out, _ = run(capsys, "calendars", "sync", row["id"], "--json")
        [report] = json.loads(out)
        assert code == 0 and report["outcome"] == "unchanged" and report["busy"] == 2

        work.event_by_uid("gym-1").delete()
        code, out, _ = run(capsys, "calendars", "sync", "--staff", "lee")
        assert code == 0 and out.endswith(": 1 busy interval removed\n")
    finally:
        with contextlib.suppress(Exception):
            work.event_by_uid("gym-1").delete()
        client.close()

    code, _, err = run(capsys, "calendars", "sync", "cal_nope")
    assert code == 1 and "no calendar connection cal_nope" in err


def test_sync_reports_a_calendar_that_cannot_be_read(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    radicale: RadicaleServer,
    database: Path,
) -> None:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    run(capsys, "import", str(DEMO))
    assert link_caldav(capsys, monkeypatch, radicale, PASSWORD)[0] == 0
    [row] = json.loads(run(capsys, "calendars", "list", "--json")[1])
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:  # the server moved: the stored address answers nothing
        conn.execute(
            sa.text("UPDATE calendarconnection SET read_calendars = :cals"),
            {"cals": json.dumps([f"{radicale.principal_url}gone/"])},
        )
    engine.dispose()
    code, out, _ = run(capsys, "calendars", "sync")
    assert code == 1
    assert out.startswith(f"{row['id']}  lee  caldav  {row['name']}: failed: ")
    assert "was not found" in out and PASSWORD not in out


def linked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, radicale: RadicaleServer
) -> str:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    run(capsys, "import", str(DEMO))
    code, _, err = link_caldav(capsys, monkeypatch, radicale, PASSWORD)
    assert code == 0, err
    [row] = json.loads(run(capsys, "calendars", "list", "--json")[1])
    return str(row["id"])


def busy_rows(database: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM calendar_busy")).scalar_one()
    engine.dispose()
    return int(count)


def test_choose_calendars_by_name(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    radicale: RadicaleServer,
    database: Path,
) -> None:
    conn_id = linked(capsys, monkeypatch, radicale)
    work, family = f"{radicale.principal_url}work/", f"{radicale.principal_url}family/"

    code, out, err = run(
        capsys, "calendars", "use", conn_id, "--read", "work, FAMILY", "--write", "Work"
    )
    assert (code, err) == (0, "")
    assert out == f"{conn_id}: Reads: Work, Family · Writes: Work\n"
    code, out, _ = run(capsys, "calendars", "show", conn_id, "--json")
    marks = {r["name"]: (r["read"], r["write"]) for r in json.loads(out)}
    assert marks == {"Work": (True, True), "Family": (True, False)}
    code, out, _ = run(capsys, "calendars", "show", conn_id)
    assert f"{work}\tWork\tread, write" in out and f"{family}\tFamily\tread" in out
    assert out.endswith("Reads: Work, Family · Writes: Work\n")

    # Only --write: what is read stays; ids work as well as names.
    code, out, _ = run(capsys, "calendars", "use", conn_id, "--write", family)
    assert out == f"{conn_id}: Reads: Work, Family · Writes: Family\n"
    # Only --read: what is written stays. Reading Family alone drops the Dentist from the cache.
    code, out, _ = run(capsys, "calendars", "use", conn_id, "--read", "Family")
    assert out == f"{conn_id}: Reads: Family · Writes: Family\n"
    assert busy_rows(database) == 0
    code, out, _ = run(capsys, "calendars", "use", conn_id, "--read", "Work", "--write", "none")
    assert out == f"{conn_id}: Reads: Work · Writes: nothing\n"
    assert busy_rows(database) == 1

    code, out, _ = run(capsys, "calendars", "list")
    assert out.splitlines()[1] == "    Reads: Work · Writes: nothing"
    [row] = json.loads(run(capsys, "calendars", "list", "--json")[1])
    assert row["read_calendars"] == [work] and row["write_calendar"] is None
    assert {c["name"]: c["read"] for c in row["calendars"]} == {"Work": True, "Family": False}


def test_unknown_or_unclear_choices_exit_2_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, radicale: RadicaleServer
) -> None:
    conn_id = linked(capsys, monkeypatch, radicale)
    before = run(capsys, "calendars", "show", conn_id, "--json")[1]

    code, out, err = run(capsys, "calendars", "use", conn_id, "--read", "Work,Gym")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "'Gym'" in err and "It has: " in err
    assert "Work" in err and "Family" in err and "Traceback" not in err
    for bad in (
        ["--write", "Gym"],
        ["--write", "Work,Family"],
        ["--read", " , "],
        [],
    ):
        code, out, err = run(capsys, "calendars", "use", conn_id, *bad)
        assert (code, out) == (2, ""), bad
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert run(capsys, "calendars", "show", conn_id, "--json")[1] == before  # nothing changed

    code, _, err = run(capsys, "calendars", "use", "cal_nope", "--read", "Work")
    assert code == 1 and "no calendar connection cal_nope" in err
    code, _, err = run(capsys, "calendars", "show", "cal_nope")
    assert code == 1 and "no calendar connection cal_nope" in err


def test_link_json_prints_the_new_connection(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, radicale: RadicaleServer
) -> None:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    run(capsys, "import", str(DEMO))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code, out, err = run(
        capsys,
        "calendars",
        "link",
        "caldav",
        "--staff",
        "lee",
        "--url",
        radicale.principal_url,
        "--username",
        USERNAME,
        "--password-stdin",
        "--name",
        "Lee's Radicale",
        "--json",
    )
    assert code == 0, err
    linked = json.loads(out)  # the whole output is the JSON document
    assert PASSWORD not in out
    assert linked["provider"] == "caldav" and linked["name"] == "Lee's Radicale"
    assert linked["status"] == "ok" and linked["staff"] == "lee"
    [listed] = json.loads(run(capsys, "calendars", "list", "--json")[1])
    assert listed["id"] == linked["id"]
    calendars = {c["name"]: c for c in linked["calendars"]}
    assert set(calendars) == {"Work", "Family"}
    assert [c["id"] for c in linked["calendars"] if c["read"]] == linked["read_calendars"]
    assert [c["id"] for c in linked["calendars"] if c["write"]] == [linked["write_calendar"]]
    assert calendars["Work"]["read"]  # the Dentist's calendar is read by default


def test_oauth_link_json_prints_the_consent_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("FRONTDESK_GOOGLE_CLIENT_ID", "client-123.apps.googleusercontent.com")
    monkeypatch.setenv("FRONTDESK_GOOGLE_CLIENT_SECRET", "shh-not-printed")
    run(capsys, "import", str(DEMO))
    code, out, err = run(capsys, "calendars", "link", "google", "--staff", "lee", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["provider"] == "google"
    assert answer["authorize_url"].startswith("https://accounts.google.com/")
    assert "client-123.apps.googleusercontent.com" in answer["authorize_url"]
    assert "shh-not-printed" not in out
