"""`.env.example` lists every setting, and an empty line in it means "use the default"."""

from __future__ import annotations

from pathlib import Path

from frontdesk.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_every_setting_is_listed() -> None:
    listed = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in EXAMPLE.read_text().splitlines()
        if "=" in line
    }
    missing = {f"FRONTDESK_{name.upper()}" for name in Settings.model_fields} - listed
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_the_example_file_loads_as_is() -> None:
    settings = Settings(_env_file=EXAMPLE)  # type: ignore[call-arg]
    assert settings.openai_base_url is None and settings.api_key is None
    assert settings.secret_key is None and settings.twilio_api_base_url is None
    # The web surface's settings: derived public address, default hosts, no trusted proxy.
    assert settings.public_base_url == "http://127.0.0.1:8000"
    assert settings.allowed_hosts is None and settings.trusted_proxies == []
    assert settings.hosts_answered() == ["127.0.0.1", "localhost", "::1"]
