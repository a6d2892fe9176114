"""All configuration, read once from the environment (prefix FRONTDESK_) and passed in."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'frontdesk.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRONTDESK_", env_file=".env", extra="ignore")

    database_url: str = Field(default_factory=_default_database_url,
                              description="SQLAlchemy URL; SQLite file by default, or PostgreSQL")
    api_key: SecretStr | None = Field(default=None,
                                      description="Bearer key for /api/v1; generated if unset")
    host: str = "127.0.0.1"
    port: int = 8000
    hold_minutes: int = Field(default=5, ge=1, le=60)
    calendar_timeout_seconds: float = Field(default=4.0, gt=0)
    log_level: str = "INFO"
