"""Builds the calendar service and its providers from settings."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine

from calendars.base import CalendarProvider, OAuthClient
from calendars.caldav import CaldavProvider
from calendars.google import GoogleOAuth, GoogleProvider
from calendars.ics import IcsProvider
from calendars.microsoft import MicrosoftOAuth, MicrosoftProvider
from calendars.secrets import Vault
from calendars.service import CalendarService
from frontdesk.settings import Settings


def build_providers(settings: Settings) -> dict[str, CalendarProvider]:
    timeout = settings.calendar_timeout_seconds
    return {
        "ics": IcsProvider(timeout=timeout),
        "caldav": CaldavProvider(timeout=timeout),
        "google": GoogleProvider(api_base_url=settings.google_api_base_url, timeout=timeout),
        "microsoft": MicrosoftProvider(
            graph_base_url=settings.microsoft_graph_base_url,
            timeout=timeout,
            time_limit=max(timeout, 10.0),
        ),
    }


def build_oauth(settings: Settings) -> dict[str, OAuthClient]:
    clients: dict[str, OAuthClient] = {}
    if settings.google_client_id and settings.google_client_secret:
        clients["google"] = GoogleOAuth(
            settings.google_client_id,
            settings.google_client_secret.get_secret_value(),
            auth_url=settings.google_auth_url,
            token_url=settings.google_token_url,
            api_base_url=settings.google_api_base_url,
        )
    if settings.microsoft_client_id and settings.microsoft_client_secret:
        clients["microsoft"] = MicrosoftOAuth(
            settings.microsoft_client_id,
            settings.microsoft_client_secret.get_secret_value(),
            authority=settings.microsoft_authority,
        )
    return clients


def build_calendar_service(settings: Settings, engine: Engine) -> CalendarService:
    key = settings.secret_key.get_secret_value() if settings.secret_key else None
    return CalendarService(
        engine=engine,
        vault=Vault(key),
        providers=build_providers(settings),
        oauth=build_oauth(settings),
        public_base_url=settings.public_base_url,
        horizon=timedelta(days=settings.calendar_horizon_days),
        max_age=timedelta(seconds=settings.calendar_cache_max_age_seconds),
        timeout=settings.calendar_timeout_seconds,
        allow_private_urls=settings.allow_private_urls,
    )
