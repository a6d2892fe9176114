"""All configuration, read once from the environment (prefix FRONTDESK_) and passed in."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'frontdesk.db'}"


def _env_file() -> str | None:
    """The dotenv file settings are read from: `.env` in the working directory, or the one
    `FRONTDESK_ENV_FILE` names; an empty `FRONTDESK_ENV_FILE` reads none (the test suite)."""
    return os.environ.get("FRONTDESK_ENV_FILE", ".env") or None


class Settings(BaseSettings):
    # An empty value (`FRONTDESK_OPENAI_BASE_URL=` as in .env.example) means "the default".
    model_config = SettingsConfigDict(env_prefix="FRONTDESK_", env_file=_env_file(),
                                      extra="ignore", env_ignore_empty=True)

    database_url: str = Field(default_factory=_default_database_url,
                              description="SQLAlchemy URL; SQLite file by default, or PostgreSQL")
    api_key: SecretStr | None = Field(default=None,
                                      description="Bearer key for /api/v1; generated if unset")
    host: str = "127.0.0.1"
    port: int = 8000
    hold_minutes: int = Field(default=5, ge=1, le=60)
    calendar_timeout_seconds: float = Field(default=4.0, gt=0)
    log_level: str = "INFO"

    # The LLM: any OpenAI-compatible Chat Completions server.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = Field(default=None,
                                        description="e.g. http://localhost:11434/v1; unset: OpenAI")
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = Field(default=8.0, gt=0)

    # Telephony.
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: str | None = Field(default=None,
                                            description="override Twilio's REST base (tests)")
    public_base_url: str = Field(default="http://localhost:8000",
                                 description="the https URL Twilio reaches us at")
    voice_mode: str = Field(default="relay", pattern="^(relay|gather)$")
    voice_language: str = "en-US"
    voice_tts_voice: str | None = None

    allow_private_urls: bool = Field(
        default=False, description="let calendar links and webhooks reach loopback and "
                                   "private-network addresses (self-hosted LAN services)")

    # Linked calendars.
    secret_key: SecretStr | None = Field(
        default=None, description="Fernet key(s) encrypting calendar credentials at rest; "
                                  "comma-separated to rotate (first encrypts)")
    calendar_sync_seconds: float = Field(default=300, ge=0,
                                         description="how often the background sync runs; 0: never")
    calendar_horizon_days: int = Field(default=90, ge=7, le=400)
    calendar_cache_max_age_seconds: float = Field(default=900, gt=0)
    calendar_write_timeout_seconds: float = Field(default=4.0, gt=0)
    google_client_id: str | None = None
    google_client_secret: SecretStr | None = None
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_api_base_url: str = "https://www.googleapis.com/"
    microsoft_client_id: str | None = None
    microsoft_client_secret: SecretStr | None = None
    microsoft_authority: str = "https://login.microsoftonline.com/common"
    microsoft_graph_base_url: str = "https://graph.microsoft.com/v1.0"
