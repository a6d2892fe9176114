"""The suite ignores the developer's `.env` and FRONTDESK_ shell settings (issue: `scripts/run`
saved FRONTDESK_SECRET_KEY to `.env`, and then `scripts/test` failed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY = "x2mQ0Yq1b6sJ8f0uT9Qk3J2v8m4rZl5nH7aW1cE0dGs="
SECRET_TEST = "tests/frontdesk/test_cli_calendars.py::test_linking_needs_the_secret_key"


def test_settings_read_no_dotenv_here(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("FRONTDESK_SECRET_KEY=from-a-dotenv\nFRONTDESK_PORT=9\n")
    monkeypatch.chdir(tmp_path)
    from frontdesk.settings import Settings

    settings = Settings()
    assert settings.secret_key is None and settings.port == 8000


def test_the_suite_passes_beside_a_developers_env(tmp_path: Path) -> None:
    """Run a test that needs FRONTDESK_SECRET_KEY unset, from a folder whose `.env` sets it and
    with the shell setting it too: it still passes."""
    (tmp_path / ".env").write_text(f"FRONTDESK_SECRET_KEY={KEY}\n")
    env = {k: v for k, v in os.environ.items() if k != "FRONTDESK_ENV_FILE"}
    env["FRONTDESK_SECRET_KEY"] = KEY
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            "-c",
            str(ROOT / "pyproject.toml"),
            str(ROOT / SECRET_TEST),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
