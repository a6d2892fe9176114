"""The `frontdesk` command as a user types it: import, export, availability, book, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from frontdesk.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-business.yaml"
NOW = "2026-11-30T12:00:00+00:00"


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("FRONTDESK_LOG_LEVEL", "WARNING")
    return db


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_is_idempotent_and_export_round_trips(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run(capsys, "import", str(DEMO))[:2] == (0, "bright-smile: created\n")
    assert run(capsys, "import", str(DEMO))[:2] == (0, "bright-smile: unchanged\n")
    code, out, _ = run(capsys, "export", "--format", "json")
    exported = json.loads(out)
    assert code == 0 and exported["business"]["id"] == "bright-smile"
    assert {s["id"] for s in exported["staff"]} == {
        s["id"] for s in yaml.safe_load(DEMO.read_text())["staff"]
    }
    edited = tmp_path / "edited.json"
    exported["business"]["name"] = "Bright Smile Dental & Ortho"
    edited.write_text(json.dumps(exported))
    assert run(capsys, "import", str(edited))[:2] == (0, "bright-smile: updated\n")


def test_import_notes_a_reminder_that_takes_more_than_one_sms(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run(capsys, "import", str(DEMO))[2] == ""  # the demo's reminders fit one segment
    raw = yaml.safe_load(DEMO.read_text())
    raw["services"][1]["reminders"] = {"text": "{business}: " + "à bientôt " * 8 + "{date}"}
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    code, _, err = run(capsys, "import", str(edited))
    assert code == 0
    assert err == (
        "note: the checkup reminder can take 2 SMS segments (111 UCS-2 characters; one "
        "segment holds 70)\n"
    )


def test_bad_business_file_names_the_field_and_exits_non_zero(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    text = DEMO.read_text().replace("America/New_York", "America/Nowhere", 1)
    bad.write_text(text)
    code, _, err = run(capsys, "import", str(bad))
    assert code == 1 and "business.timezone" in err
    assert run(capsys, "export")[0] == 1  # nothing was half-imported


def test_availability_json_book_and_cancel(capsys) -> None:  # type: ignore[no-untyped-def]
    run(capsys, "import", str(DEMO))
    code, out, _ = run(
        capsys,
        "availability",
        "--service",
        "cleaning",
        "--staff",
        "lee",
        "--from",
        "2026-12-07",
        "--to",
        "2026-12-07",
        "--now",
        NOW,
        "--json",
    )
    body = json.loads(out)
    assert code == 0 and body["timezone"] == "America/New_York"
    first = body["slots"][0]
    assert first["staff"] == "lee" and first["start"].endswith("-05:00")

    book = [
        "book",
        "--service",
        "cleaning",
        "--staff",
        "lee",
        "--start",
        first["start"],
        "--name",
        "Ann Smith",
        "--now",
        NOW,
    ]
    code, out, _ = run(capsys, *book, "--phone", "+12025550001")
    assert code == 0 and out.startswith("apt_")
    appointment_id = out.strip()
    code, _, err = run(capsys, *book, "--phone", "+12025550002")
    assert code == 1 and "taken" in err

    code, out, _ = run(
        capsys,
        "availability",
        "--service",
        "cleaning",
        "--staff",
        "lee",
        "--from",
        "2026-12-07",
        "--to",
        "2026-12-07",
        "--now",
        NOW,
        "--json",
    )
    assert first["start"] not in {s["start"] for s in json.loads(out)["slots"]}
    assert run(capsys, "cancel", appointment_id)[:2] == (0, f"{appointment_id} cancelled\n")
    assert run(capsys, "cancel", appointment_id)[0] == 1


def test_malformed_command_lines_exit_2(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "book",
                "--service",
                "cleaning",
                "--staff",
                "lee",
                "--start",
                "tomorrow 9am",
                "--name",
                "A",
                "--phone",
                "+12025550001",
            ]
        )
    assert exc.value.code == 2
    assert "ISO" in capsys.readouterr().err
