"""`frontdesk users add`: the first account, with the password never on the command line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlmodel import select

from booking.db import make_engine, session_scope
from dashboard.models import User
from dashboard.users import authenticate
from frontdesk.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-business.yaml"


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", url)
    monkeypatch.setenv("FRONTDESK_LOG_LEVEL", "WARNING")
    assert main(["import", str(DEMO)]) == 0
    return url


def add(monkeypatch: pytest.MonkeyPatch, password: str, *args: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    return main(["users", "add", "--password-stdin", *args])


def test_users_add_creates_accounts_that_can_log_in(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert add(monkeypatch, "a long secret", "--email", "Owner@Example.com", "--role", "owner") == 0
    assert "owner@example.com (owner) at bright-smile" in capsys.readouterr().out
    assert (
        add(
            monkeypatch,
            "another secret",
            "--business",
            "bright-smile",
            "--email",
            "lee@example.com",
            "--role",
            "staff",
            "--staff",
            "lee",
        )
        == 0
    )
    engine = make_engine(database)
    with session_scope(engine) as s:
        users = {u.email: u for u in s.exec(select(User))}
        assert users["lee@example.com"].staff_id == "lee"
        assert users["owner@example.com"].password_hash.startswith("$argon2id$")
        assert authenticate(s, "owner@example.com", "a long secret") is not None
        assert authenticate(s, "owner@example.com", "a long secreT") is None
    engine.dispose()


@pytest.mark.parametrize(
    ("password", "args", "message"),
    [
        ("short", ["--email", "a@b.co", "--role", "owner"], "at least 10 characters"),
        ("a long secret", ["--email", "a@b.co", "--role", "staff"], "needs --staff"),
        (
            "a long secret",
            ["--email", "a@b.co", "--role", "staff", "--staff", "nobody"],
            "no staff member 'nobody'",
        ),
        ("a long secret", ["--email", "not-an-email", "--role", "owner"], "not an email"),
    ],
)
def test_users_add_refuses_bad_accounts(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    password: str,
    args: list[str],
    message: str,
) -> None:
    capsys.readouterr()
    # Malformed values exit 2, an unknown staff member (a refusal) 1.
    assert add(monkeypatch, password, *args) == (1 if "no staff" in message else 2)
    assert message in capsys.readouterr().err


def test_users_add_refuses_a_second_account_for_one_email(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert add(monkeypatch, "a long secret", "--email", "o@b.co", "--role", "owner") == 0
    assert add(monkeypatch, "a long secret", "--email", "O@b.co", "--role", "owner") == 1
    assert "already an account" in capsys.readouterr().err


def test_a_second_account_for_one_email_is_a_conflict_not_a_malformed_value(
    database: str,
) -> None:
    """The clash is its own error type (a refusal, exit 1), not `InvalidRequest` (malformed,
    exit 2): the command line maps the type, not the message's words."""
    from datetime import UTC, datetime

    from booking import errors
    from dashboard.users import AccountExists, add_user
    from frontdesk.cli_errors import REFUSED, report

    engine = make_engine(database)
    now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    add_user(
        engine,
        business_id="bright-smile",
        email="o@b.co",
        password="a long secret",
        role="owner",
        now=now,
    )
    with pytest.raises(AccountExists) as clash:
        add_user(
            engine,
            business_id="bright-smile",
            email="O@B.co ",
            password="a long secret",
            role="owner",
            now=now,
        )
    engine.dispose()
    assert not isinstance(clash.value, errors.InvalidRequest)
    assert clash.value.code == "account_exists"
    assert report(clash.value) == (REFUSED, "error: there is already an account for o@b.co")


def test_there_is_no_password_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["users", "add", "--email", "a@b.co", "--role", "owner", "--password", "x"])
    assert exited.value.code == 2
