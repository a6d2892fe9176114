"""All configuration, read once from the environment (prefix FRONTDESK_) and passed in."""

from __future__ import annotations

import json
import os
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
HOST_NAME = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")  # a host name, IPv4 or IPv6 address


def host_entry(text: str) -> str:
    """An allowed-hosts entry as a Host header's host is compared with it: lower case, without
    a port, IPv6 brackets or a trailing dot (`Desk.Example.com:8443` -> `desk.example.com`,
    `[::1]:8000` -> `::1`, `*.example.com:443` -> `*.example.com`). ValueError when the entry
    is not a host name, an address, `*.name` or `*`."""
    value = text.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        bad_port = not sep or bool(rest and not (rest[:1] == ":" and rest[1:].isdigit()))
    elif value.count(":") == 1:  # name:port or v4:port (a bare IPv6 address has more colons)
        host, _, port = value.partition(":")
        bad_port = not port.isdigit()
    else:
        host, bad_port = value, False
    wildcard = host.startswith("*.")
    name = (host[2:] if wildcard else host).rstrip(".")
    host = f"*.{name}" if wildcard else name
    if bad_port or not (host == "*" or (name and HOST_NAME.fullmatch(name))):
        raise ValueError(
            f"{text.strip()!r} is not a host name (like desk.example.com, "
            "desk.example.com:8443, *.example.com or [::1]:8000)"
        )
    return host


def _default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'frontdesk.db'}"


def _env_file() -> str | None:
    """The dotenv file settings are read from: `.env` in the working directory, or the one
    `FRONTDESK_ENV_FILE` names; an empty `FRONTDESK_ENV_FILE` reads none (the test suite)."""
    return os.environ.get("FRONTDESK_ENV_FILE", ".env") or None


def address_url(host: str, port: int) -> str:
    """`http://host:port`, the address a server bound there answers at (`0.0.0.0`: localhost)."""
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _split(value: Any) -> Any:
    """A list setting from the environment: comma-separated (`a, b`) or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # An empty value (`FRONTDESK_OPENAI_BASE_URL=` as in .env.example) means "the default".
    model_config = SettingsConfigDict(
        env_prefix="FRONTDESK_", env_file=_env_file(), extra="ignore", env_ignore_empty=True
    )

    database_url: str = Field(
        default_factory=_default_database_url,
        description="SQLAlchemy URL; SQLite file by default, or PostgreSQL",
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer key for /api/v1; generated if unset"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    # Processes: how many `frontdesk serve` runs, whether they also run the background jobs
    # (off: a separate `frontdesk worker` does), and how long a stop waits for work in flight.
    workers: int = Field(default=1, ge=1, le=64)
    run_jobs: bool = True
    shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=600)
    # `frontdesk worker` serves /healthz, /readyz and /metrics on this port when set.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    call_idle_seconds: float = Field(
        default=7200, gt=0, description="a call with no turn for this long is ended (its lead kept)"
    )
    hold_minutes: int = Field(default=5, ge=1, le=60)
    calendar_timeout_seconds: float = Field(default=4.0, gt=0)
    # The one retry policy of the calendar providers: how many attempts a refused or failed
    # request gets, and the longest Retry-After a server may ask for before giving up at once.
    retry_attempts: int = Field(default=4, ge=1, le=10)
    retry_max_wait_seconds: float = Field(default=30.0, ge=0, le=3600)
    log_level: str = "INFO"
    log_format: str = Field(
        default="text", pattern="^(text|json)$", description="text, or json: one object a line"
    )

    # The LLM: any OpenAI-compatible Chat Completions server.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = Field(
        default=None, description="e.g. http://localhost:11434/v1; unset: OpenAI"
    )
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = Field(default=8.0, gt=0)

    # Telephony.
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: str | None = Field(
        default=None, description="override Twilio's REST base (tests)"
    )
    public_base_url: str = Field(
        default="",
        description="the address Twilio, calendar providers and browsers reach us "
        "at; every absolute URL shown is built from it. "
        "Unset: http://HOST:PORT",
    )
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Host header values answered; others get 400. Unset: the "
        "public base URL's host, localhost, 127.0.0.1, ::1 and HOST",
    )
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description="addresses (IPs or CIDRs) of the reverse proxies whose "
        "X-Forwarded-For / -Proto headers are believed",
    )
    voice_mode: str = Field(default="relay", pattern="^(relay|gather)$")
    voice_language: str = "en-US"
    voice_tts_voice: str | None = None

    allow_private_urls: bool = Field(
        default=False,
        description="let calendar links and webhooks reach loopback and "
        "private-network addresses (self-hosted LAN services)",
    )

    # Linked calendars.
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s) encrypting calendar credentials at rest; "
        "comma-separated to rotate (first encrypts)",
    )
    calendar_sync_seconds: float = Field(
        default=300, ge=0, description="how often the background sync runs; 0: never"
    )
    calendar_poll_seconds: float = Field(
        default=60,
        ge=0,
        description="how often calendars without push notifications (CalDAV, "
        "ICS) are checked for changes; 0: only at each sync",
    )
    sms_lease_seconds: float = Field(
        default=60,
        ge=1,
        description="how long a worker's claim on a text lasts before another worker may send "
        "it (longer than one send takes)",
    )
    reminder_seconds: float = Field(
        default=30, gt=0, description="how often due appointment reminders are queued"
    )
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

    # True when `public_base_url` was not set but derived from `host` and `port`.
    _derived_base_url: bool = PrivateAttr(default=False)

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    "must be an http:// or https:// address, e.g. https://desk.example.com"
                )
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _allowed_hosts(cls, value: Any) -> Any:
        value = _split(value)
        if isinstance(value, list):
            hosts = [host_entry(str(host)) for host in value if str(host).strip()]
            return list(dict.fromkeys(hosts)) or None
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: Any) -> Any:
        value = _split(value)
        if isinstance(value, list):
            try:
                return [ip_network(str(item).strip(), strict=False) for item in value]
            except ValueError as exc:
                raise ValueError(f"{exc}: use IP addresses or CIDRs such as 10.0.0.0/8") from None
        return value

    @model_validator(mode="after")
    def _derive_base_url(self) -> Settings:
        if not self.public_base_url:
            self.public_base_url = address_url(self.host, self.port)
            self._derived_base_url = True
        return self

    def bound_to(self, host: str, port: int) -> Settings:
        """These settings for a server listening on `host:port` (`serve --host/--port`): a
        public base URL that was derived from the address follows it."""
        update: dict[str, Any] = {"host": host, "port": port}
        if self._derived_base_url:
            update["public_base_url"] = address_url(host, port)
        copy = self.model_copy(update=update)
        copy._derived_base_url = self._derived_base_url
        return copy

    def hosts_answered(self) -> list[str]:
        """The Host header values the web app answers (`allowed_hosts`, or its default)."""
        if self.allowed_hosts:
            return list(self.allowed_hosts)
        public = urlsplit(self.public_base_url).hostname or ""
        found = [public, *LOCAL_HOSTS, self.host.strip("[]").lower()]
        return [host for i, host in enumerate(found) if host and host not in found[:i]]
