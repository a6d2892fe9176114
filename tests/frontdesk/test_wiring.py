"""The composition root gives every calendar provider the same retry policy and clock."""

from __future__ import annotations

from typing import Any, cast

from booking.clock import SystemClock
from booking.retry import RetryPolicy
from frontdesk.settings import Settings
from frontdesk.wiring import build_providers


async def test_google_microsoft_and_caldav_retry_through_one_policy_from_settings() -> None:
    settings = Settings(retry_attempts=2, retry_max_wait_seconds=12)
    clock = SystemClock()
    providers = build_providers(settings, clock)
    try:
        policies: list[RetryPolicy] = [
            cast(Any, providers[name])._retry for name in ("caldav", "google", "microsoft")
        ]
        [policy] = {id(p): p for p in policies}.values()
        assert policy.attempts == 2 and policy.max_retry_after == 12
        assert policy.clock is clock
    finally:
        for provider in providers.values():
            await provider.aclose()


def test_the_retry_settings_have_sane_defaults() -> None:
    settings = Settings()
    assert settings.retry_attempts == 4 and settings.retry_max_wait_seconds == 30
