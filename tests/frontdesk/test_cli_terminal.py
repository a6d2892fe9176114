"""The command line in a terminal: plain words when no model is configured, quiet logs, no
traceback into a closed pipe, exit 2 for malformed values, and exports that travel."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from frontdesk.cli import DEMO_BUSINESS, main

NOW = "2026-11-30T12:00:00+00:00"
MONDAY_9AM = "2026-12-07T09:00:00-05:00"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'terminal.db'}"
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", url)
    assert main(["import", str(DEMO_BUSINESS)]) == 0
    return url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def book(
    capsys: pytest.CaptureFixture[str],
    *extra: str,
    name: str = "Ann Smith",
    phone: str = "+12025550123",
) -> tuple[int, str, str]:
    return run(
        capsys,
        *extra,
        "book",
        "--service",
        "cleaning",
        "--staff",
        "lee",
        "--start",
        MONDAY_9AM,
        "--name",
        name,
        "--phone",
        phone,
        "--now",
        NOW,
    )


# ---- chat without a model -------------------------------------------------------------------


def test_chat_without_a_model_says_so_and_takes_a_message(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database: str,
) -> None:
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("Ann Smith\nMy crown came off\n+12025550123\nno\n")
    )
    code, out, _ = run(capsys, "chat", "--now", NOW)
    assert code == 0
    assert "No language model is configured" in out
    assert "FRONTDESK_OPENAI_API_KEY" in out and "FRONTDESK_OPENAI_BASE_URL" in out
    assert "can't reach our booking system" not in out
    assert "May I have your name" in out and "passed your message on" in out
    engine = sa.create_engine(database)
    with engine.connect() as conn:
        [(name, phone, reason)] = conn.execute(sa.text("SELECT name, phone, reason FROM lead"))
    engine.dispose()
    assert (name, phone) == ("Ann Smith", "+12025550123") and "crown" in reason


# ---- logs --------------------------------------------------------------------------------


def test_commands_log_only_warnings_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    assert book(capsys)[0] == 0
    code, _, err = book(capsys, phone="+12025550124")
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error:")  # one line
    code, _, err = book(capsys, "--verbose", phone="+12025550124")
    assert code == 1
    info = [line for line in err.splitlines() if " INFO " in line]
    assert info, err
    # UTC times: 2026-12-01T10:00:00Z INFO frontdesk: ...
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO ", line) for line in info)


# ---- a closed pipe ---------------------------------------------------------------------------


def test_availability_into_a_closed_pipe_ends_quietly(database: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")}
    env.update({"FRONTDESK_ENV_FILE": "", "FRONTDESK_DATABASE_URL": database})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frontdesk.cli",
            "availability",
            "--service",
            "cleaning",
            "--from",
            "2026-12-07",
            "--to",
            "2026-12-18",
            "--now",
            NOW,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` that has read its lines: every write now fails
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) in (0, 141)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# ---- malformed values exit 2, refusals 1 -----------------------------------------------------


def test_a_bad_phone_exits_2_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = book(capsys, phone="not a phone")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "phone" in err


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--name", "   "], "--name"),
        (["--start", "tomorrow 9am"], "ISO"),
    ],
)
def test_malformed_arguments_exit_2_in_one_line(
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    word: str,
) -> None:
    base = {
        "--service": "cleaning",
        "--staff": "lee",
        "--start": MONDAY_9AM,
        "--name": "Ann",
        "--phone": "+12025550123",
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    with pytest.raises(SystemExit) as exited:
        main(["book", *[x for pair in base.items() for x in pair]])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert len(err.strip().splitlines()) == 1 and word in err, err


def test_a_bad_date_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            ["availability", "--service", "cleaning", "--from", "2026-13-01", "--to", "2026-12-02"]
        )
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1 and "date" in err
    code, _, err = run(
        capsys,
        "availability",
        "--service",
        "cleaning",
        "--from",
        "2026-12-09",
        "--to",
        "2026-12-02",
        "--now",
        NOW,
    )
    assert code == 2 and "before" in err


def test_an_unknown_appointment_is_a_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cancel", "apt_nope")
    assert code == 1 and err.startswith("error:")


# ---- export ---------------------------------------------------------------------------------


def sources(text: str) -> list[str]:
    data = yaml.safe_load(text)
    return [c["source"] for s in data["staff"] for c in s.get("calendars", [])]


def clinic_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    """A copy of the demo folder, imported: calendar files may only come from the business
    file's own folder, so an export that is to be read again is written there."""
    folder = tmp_path / "clinic"
    shutil.copytree(DEMO_BUSINESS.parent, folder)
    assert run(capsys, "import", str(folder / DEMO_BUSINESS.name))[0] == 0
    return folder


def test_export_writes_calendar_paths_relative_to_the_file(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = clinic_folder(capsys, tmp_path)
    out = folder / "backup.yaml"
    assert run(capsys, "export", "-o", str(out))[0] == 0
    paths = sources(out.read_text())
    assert paths == ["calendars/lee.ics", "calendars/patel.ics"], paths
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run(capsys, "import", str(out))[:2] == (0, "bright-smile: unchanged\n")


def test_export_to_stdout_is_relative_to_the_working_directory(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = clinic_folder(capsys, tmp_path)
    monkeypatch.chdir(folder / "calendars")
    code, text, _ = run(capsys, "export")
    assert code == 0 and sources(text) == ["lee.ics", "patel.ics"]
    monkeypatch.chdir(folder)
    code, text, _ = run(capsys, "export")
    assert code == 0 and sources(text) == ["calendars/lee.ics", "calendars/patel.ics"]
    (folder / "printed.yaml").write_text(text)
    assert run(capsys, "import", "printed.yaml")[:2] == (0, "bright-smile: unchanged\n")
