"""The change-notification endpoints under hostile input: Graph's (`/calendars/notify/microsoft`)
and Google's (`/calendars/notify/google`) answer every odd request with a clear 4xx, read all of a
batch's channels at once, and answer Graph before they record what changed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from booking.db import session_scope
from calendars import web as calendar_web
from calendars.models import CalendarChannel, CalendarConnection
from calendars.secrets import Vault
from calendars.service import CalendarService, Notice
from tests.conftest import NOW, count_rows

GRAPH = "/calendars/notify/microsoft"
GOOGLE = "/calendars/notify/google"
SUB = "3f0b8a52-6c1e-4a39-9a0e-2d5b1c7e9f10"
STATE = "client-state-token-1"
CHANNEL = "a" * 32
TOKEN = "google-channel-token"


@pytest.fixture
def linked(clinic: Engine) -> Engine:
    """One Microsoft and one Google connection of Dr. Lee, each with a live channel."""
    with session_scope(clinic, write=True) as s:
        for conn_id, provider in (("cal_ms", "microsoft"), ("cal_g", "google")):
            s.add(
                CalendarConnection(
                    id=conn_id,
                    business_id="clinic",
                    staff_id="lee",
                    provider=provider,
                    name=provider,
                    read_calendars=["c"],
                    sync={"c": {"synced_at": NOW.isoformat()}},
                )
            )
        s.flush()
        s.add(
            CalendarChannel(
                id=SUB,
                connection_id="cal_ms",
                calendar_id="c",
                token=STATE,
                expires_at=NOW + timedelta(days=2),
            )
        )
        s.add(
            CalendarChannel(
                id=CHANNEL,
                connection_id="cal_g",
                calendar_id="c",
                token=TOKEN,
                resource_id="res-1",
                expires_at=NOW + timedelta(days=2),
            )
        )
    return clinic


@pytest.fixture
def service(linked: Engine) -> CalendarService:
    # No providers: a refresh a notification pokes fails quietly, which is not what is tested.
    return CalendarService(engine=linked, vault=Vault(None), providers={}, now=lambda: NOW)


@asynccontextmanager
async def serve(service: CalendarService) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(calendar_web.router)
    app.state.calendar_service = service
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", ws="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()
        await service.wait_pokes()


@pytest.fixture
async def client(service: CalendarService) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(service) as c:
        yield c


@pytest.fixture
def channel_reads(linked: Engine) -> Iterator[list[str]]:
    """Every SQL statement that reads the channel table."""
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM calendarchannel" in statement:
            seen.append(statement)

    sa.event.listen(linked, "before_cursor_execute", listen)
    yield seen
    sa.event.remove(linked, "before_cursor_execute", listen)


def item(sub: Any = SUB, state: Any = STATE, **extra: Any) -> dict[str, Any]:
    return {
        "subscriptionId": sub,
        "clientState": state,
        "changeType": "updated",
        "resource": "Users/u/Events/e",
        **extra,
    }


def dirty(engine: Engine, conn_id: str = "cal_ms") -> bool:
    return (
        count_rows(
            engine,
            "SELECT count(*) FROM calendarconnection WHERE id = :i AND dirty_at IS NOT NULL",
            i=conn_id,
        )
        == 1
    )


async def settle(service: CalendarService, *, changes: bool = False) -> None:
    """Let the work after the answer run: until it pokes a refresh if `changes` are expected,
    otherwise for long enough that a wrongly recorded change would show."""
    for _ in range(500 if changes else 5):  # up to 10 s on a loaded machine
        if service.background.tasks:
            break
        await asyncio.sleep(0.02)
    await service.wait_pokes()


# ---- Microsoft Graph ---------------------------------------------------------------------------


async def test_the_validation_handshake_still_echoes_the_token(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        GRAPH,
        params={"validationToken": "Validation: a b&c"},
        headers={"content-type": "text/plain"},
    )
    assert answer.status_code == 200 and answer.text == "Validation: a b&c"
    assert answer.headers["content-type"].startswith("text/plain")


async def test_a_good_notification_is_answered_202_and_recorded_after(
    client: httpx.AsyncClient, service: CalendarService, linked: Engine
) -> None:
    answer = await client.post(GRAPH, json={"value": [item()]})
    assert answer.status_code == 202
    await settle(service, changes=True)
    assert dirty(linked)
    assert not dirty(linked, "cal_g")


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,  # was a RecursionError 500
        '{"value": [' + '{"a":' * 20_000 + "}" * 20_000 + "]}",
        '{"value": [{"subscriptionId": "ab\\ud800cd", "clientState": "x"}]}',  # UnicodeEncodeError
        json.dumps({"value": [item(state=12345)]}),  # was an AttributeError 500
        json.dumps({"value": [item(state={"nested": ["x"]})]}),
        json.dumps({"value": [item(sub=12)]}),
        json.dumps({"value": [item(sub="")]}),
        json.dumps({"value": [item(sub="x" * 257)]}),
        json.dumps({"value": [item(sub="spaced id")]}),
        json.dumps({"value": [item(sub="caf\u00e9")]}),
        json.dumps({"value": [item(lifecycleEvent="m" * 500)]}),
        json.dumps({"value": [item()] * 101}),
        json.dumps({"value": "not a list"}),
        json.dumps({"value": [None]}),
        json.dumps([item()]),
        json.dumps({}),
        "not json at all",
        "",
    ],
)
async def test_malformed_notification_bodies_are_a_400_and_touch_nothing(
    client: httpx.AsyncClient, service: CalendarService, linked: Engine, body: str
) -> None:
    answer = await client.post(
        GRAPH,
        content=body.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    await settle(service)
    assert not dirty(linked)


async def test_a_body_of_invalid_utf8_is_a_400(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        GRAPH,
        content=b'{"value": [{"subscriptionId": "\xff\xfe"}]}',
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400


async def test_a_3_mb_body_is_refused_at_once(
    client: httpx.AsyncClient, linked: Engine, channel_reads: list[str]
) -> None:
    items = [item(sub=f"unknown-{n:08d}") for n in range(40_000)]
    body = json.dumps({"value": items}).encode()
    assert len(body) > 3_000_000
    started = time.perf_counter()
    declared = await client.post(GRAPH, content=body, headers={"content-type": "application/json"})

    async def stream() -> AsyncIterator[bytes]:  # no Content-Length: capped while read
        for n in range(0, len(body), 65536):
            yield body[n : n + 65536]

    streamed = await client.post(
        GRAPH, content=stream(), headers={"content-type": "application/json"}
    )
    assert declared.status_code == streamed.status_code == 413
    assert time.perf_counter() - started < 2.0
    assert channel_reads == []


async def test_a_full_batch_of_unknown_ids_is_one_read_and_fast(
    client: httpx.AsyncClient, channel_reads: list[str], linked: Engine
) -> None:
    batch = {"value": [item(sub=f"unknown-{n}") for n in range(99)] + [item()]}
    started = time.perf_counter()
    answer = await client.post(GRAPH, json=batch)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 202
    assert len(channel_reads) == 1, channel_reads
    assert elapsed < 1.0, elapsed


async def test_the_answer_is_sent_before_the_changes_are_recorded(
    service: CalendarService, linked: Engine
) -> None:
    release = asyncio.Event()
    recorded: list[list[Notice]] = []
    record = service.changed

    async def slow(notices: Sequence[Notice]) -> None:
        await release.wait()  # as if the database were slow to take the write
        await record(notices)
        recorded.append(list(notices))

    service.changed = slow  # type: ignore[method-assign]
    async with serve(service) as client:
        answer = await asyncio.wait_for(client.post(GRAPH, json={"value": [item()]}), 3)
        assert answer.status_code == 202
        assert recorded == [] and not dirty(linked)
        release.set()
        for _ in range(100):
            if recorded:
                break
            await asyncio.sleep(0.02)
    assert [[n.verdict for n in r] for r in recorded] == [["ok"]]
    assert dirty(linked)


async def test_forged_batches_are_refused_and_unknown_ones_ignored(
    client: httpx.AsyncClient, service: CalendarService, linked: Engine
) -> None:
    forged = await client.post(GRAPH, json={"value": [item(state="wrong"), item(state=None)]})
    unknown = await client.post(GRAPH, json={"value": [item(sub="no-such-subscription")]})
    empty = await client.post(GRAPH, json={"value": []})
    assert (forged.status_code, unknown.status_code, empty.status_code) == (403, 202, 202)
    await settle(service)
    assert not dirty(linked)


async def test_lifecycle_events_resync_and_renew(
    client: httpx.AsyncClient, service: CalendarService, linked: Engine
) -> None:
    renewed: list[str] = []
    service.renew_soon = renewed.append  # type: ignore[method-assign,assignment]
    missed = await client.post(GRAPH, json={"value": [item(lifecycleEvent="missed")]})
    reauth = await client.post(
        GRAPH,
        json={
            "value": [
                item(lifecycleEvent="reauthorizationRequired"),
                item(sub="unknown", lifecycleEvent="subscriptionRemoved"),
            ]
        },
    )
    assert missed.status_code == reauth.status_code == 202
    await settle(service, changes=True)
    for _ in range(500):  # the renewal may come after the refresh on a loaded machine
        if renewed:
            break
        await asyncio.sleep(0.02)
    assert renewed == [SUB]
    assert (
        count_rows(
            linked,
            "SELECT count(*) FROM calendarconnection WHERE id = 'cal_ms' "
            "AND CAST(sync AS TEXT) = '{}'",
        )
        == 1
    )


# ---- Google ------------------------------------------------------------------------------------


def push(**changes: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "X-Goog-Channel-ID": CHANNEL,
        "X-Goog-Channel-Token": TOKEN,
        "X-Goog-Resource-State": "exists",
        "X-Goog-Resource-ID": "res-1",
        "X-Goog-Message-Number": "7",
        "X-Goog-Channel-Expiration": "Wed, 09 Dec 2026 12:00:00 GMT",
        "X-Goog-Resource-URI": "https://www.googleapis.com/calendar/v3/calendars/c/events",
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


async def test_a_good_google_push_is_recorded(
    client: httpx.AsyncClient, service: CalendarService, linked: Engine
) -> None:
    sync = await client.post(GOOGLE, headers=push(**{"X-Goog-Resource-State": "sync"}))
    assert sync.status_code == 200 and not dirty(linked, "cal_g")
    good = await client.post(GOOGLE, headers=push())
    assert good.status_code == 200
    await settle(service, changes=True)
    assert dirty(linked, "cal_g")


@pytest.mark.parametrize(
    "changes",
    [
        {"X-Goog-Channel-ID": None},
        {"X-Goog-Channel-ID": ""},
        {"X-Goog-Channel-ID": "c" * 5000},
        {"X-Goog-Channel-ID": "two words"},
        {"X-Goog-Channel-Token": "t" * 300},
        {"X-Goog-Resource-State": None},
        {"X-Goog-Resource-State": "EXISTS; drop table"},
        {"X-Goog-Message-Number": "seven"},
        {"X-Goog-Message-Number": "9" * 40},
        {"X-Goog-Resource-ID": "r" * 300},
        {"X-Goog-Channel-Expiration": "x" * 3000},
        {"X-Goog-Resource-URI": "u" * 3000},
    ],
)
async def test_odd_google_headers_are_a_400(
    client: httpx.AsyncClient,
    service: CalendarService,
    linked: Engine,
    changes: dict[str, str | None],
) -> None:
    answer = await client.post(GOOGLE, headers=push(**changes))
    assert answer.status_code == 400, answer.text
    await settle(service)
    assert not dirty(linked, "cal_g")


async def test_google_headers_that_are_not_ascii_are_a_400(client: httpx.AsyncClient) -> None:
    for name in ("X-Goog-Channel-ID", "X-Goog-Channel-Token", "X-Goog-Resource-URI"):
        headers = [(k.encode(), v.encode()) for k, v in push().items() if k != name]
        headers.append((name.encode(), b"caf\xe9\xff"))
        answer = await client.post(GOOGLE, headers=headers)
        assert answer.status_code == 400, (name, answer.text)


async def test_forged_and_unknown_google_pushes(client: httpx.AsyncClient) -> None:
    forged = await client.post(GOOGLE, headers=push(**{"X-Goog-Channel-Token": "wrong"}))
    tokenless = await client.post(GOOGLE, headers=push(**{"X-Goog-Channel-Token": None}))
    unknown = await client.post(GOOGLE, headers=push(**{"X-Goog-Channel-ID": "b" * 32}))
    assert (forged.status_code, tokenless.status_code, unknown.status_code) == (403, 403, 404)
