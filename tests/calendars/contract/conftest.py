"""The contract suite's fixtures: one adapter per provider, over its wire-format server.

`contract` runs a test for every provider; `writable` for those that take bookings (Google,
Microsoft, CalDAV); `retrying` for those whose requests are retried (the same three); `oauth`
for the OAuth ones (Google, Microsoft); `credentialed` for those with a grant or a password
that can stop working (Google, Microsoft, CalDAV). Radicale runs once for the session; every
test gets a fresh calendar (and fresh fake servers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.calendars.contract.adapters import Contract, caldav_radicale, google, ics, microsoft
from tests.calendars.radicale_server import RadicaleServer, start_radicale

ALL = ["google", "microsoft", "caldav", "ics"]
WRITABLE = ["google", "microsoft", "caldav"]
OAUTH = ["google", "microsoft"]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback servers only: an HTTP proxy from the environment must not sit in between.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadicaleServer]:
    server = start_radicale(Path(tmp_path_factory.mktemp("radicale")))
    yield server
    server.stop()


async def _adapter(name: str, request: pytest.FixtureRequest) -> AsyncIterator[Contract]:
    if name == "google":
        async with google() as made:
            yield made
    elif name == "microsoft":
        async with microsoft() as made:
            yield made
    elif name == "caldav":
        server = request.getfixturevalue("radicale")
        async with caldav_radicale(server) as made:
            yield made
    else:
        async with ics() as made:
            yield made
    await asyncio.sleep(0)


@pytest.fixture(params=ALL)
async def contract(request: pytest.FixtureRequest) -> AsyncIterator[Contract]:
    async for made in _adapter(request.param, request):
        yield made


@pytest.fixture(params=WRITABLE)
async def writable(request: pytest.FixtureRequest) -> AsyncIterator[Contract]:
    async for made in _adapter(request.param, request):
        yield made


@pytest.fixture(params=WRITABLE)
async def retrying(request: pytest.FixtureRequest) -> AsyncIterator[Contract]:
    async for made in _adapter(request.param, request):
        yield made


@pytest.fixture(params=WRITABLE)
async def credentialed(request: pytest.FixtureRequest) -> AsyncIterator[Contract]:
    async for made in _adapter(request.param, request):
        yield made


@pytest.fixture(params=OAUTH)
async def oauth(request: pytest.FixtureRequest) -> AsyncIterator[Contract]:
    async for made in _adapter(request.param, request):
        yield made
