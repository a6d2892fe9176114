"""Closing the calendar service closes every provider, even when one of them fails to."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.engine import Engine

from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from tests.calendars.test_write_back import Memory
from tests.conftest import NOW


class Closing(Memory):
    def __init__(self, name: str, error: Exception | None = None) -> None:
        super().__init__()
        self.name = name
        self.error = error
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        if self.error is not None:
            raise self.error


async def test_a_provider_that_fails_to_close_does_not_leave_the_others_open(
    clinic: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "https://dav.example/?token=s3cret"
    providers = {
        "google": Closing("google", RuntimeError(f"connection reset talking to {secret}")),
        "microsoft": Closing("microsoft", OSError("socket gone")),
        "caldav": Closing("caldav"),
    }
    service = CalendarService(
        engine=clinic,
        vault=Vault(new_key()),
        providers=providers,
        now=lambda: NOW,
    )
    with caplog.at_level(logging.WARNING, logger="calendars.service"):
        await service.close()  # raises nothing: shutting down goes on
    assert all(p.closed for p in providers.values())
    failed = [r.getMessage() for r in caplog.records if "closing the" in r.getMessage()]
    assert failed == [
        "closing the google calendar provider failed (RuntimeError)",
        "closing the microsoft calendar provider failed (OSError)",
    ]
    assert not any("s3cret" in r.getMessage() for r in caplog.records)
