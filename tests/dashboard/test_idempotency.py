"""`Idempotency-Key` on POST /api/v1/appointments: a retry after a dropped connection gets the
first answer again instead of booking twice (the way payment APIs do it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import select

from booking import errors
from booking.clock import FixedClock
from booking.db import session_scope
from booking.idempotency import Claim, IdempotencyStore, Replay, RequestInProgress
from booking.models import IdempotentRequest
from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.conftest import NOW, count_rows
from tests.dashboard.conftest import seed_salon

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
BOOK = {
    "service": "cleaning",
    "staff": "lee",
    "start": "2026-12-07T09:00:00-05:00",
    "name": "Ann Smith",
    "phone": "+12025550123",
}


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(api_key=SecretStr(KEY)), scheduler=scheduler)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c


async def book(
    client: httpx.AsyncClient,
    key: str | None,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    headers = AUTH | ({"Idempotency-Key": key} if key is not None else {})
    return await client.post("/api/v1/appointments", headers=headers, json=body or BOOK)


def appointments(scheduler: Scheduler) -> int:
    return count_rows(scheduler.engine, "SELECT count(*) FROM appointment")


async def test_a_retry_with_the_same_key_gets_the_first_answer(
    client: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    first = await book(client, "order-1")
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    # The same body, its keys in another order: still the same request.
    again = await book(client, "order-1", dict(reversed(list(BOOK.items()))))
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert appointments(scheduler) == 1
    assert (
        count_rows(
            scheduler.engine, "SELECT count(*) FROM outboxevent WHERE type = 'booking.created'"
        )
        == 1
    )
    # Without a key nothing is remembered: the same request is a second attempt (taken now).
    r = await book(client, None)
    assert r.status_code == 409 and r.json()["error"] == "slot_taken"


async def test_the_same_key_with_another_body_is_refused(
    client: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    assert (await book(client, "order-1")).status_code == 201
    r = await book(client, "order-1", BOOK | {"start": "2026-12-07T10:00:00-05:00"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "idempotency_key_reused"
    assert appointments(scheduler) == 1


async def test_keys_belong_to_one_business(client: httpx.AsyncClient, scheduler: Scheduler) -> None:
    seed_salon(scheduler.engine)
    assert (await book(client, "order-1", BOOK | {"business": "clinic"})).status_code == 201
    r = await book(
        client,
        "order-1",
        {
            "business": "salon",
            "service": "cut",
            "staff": "kim",
            "start": "2026-12-07T10:00:00+00:00",
            "name": "Sue",
            "phone": "+447911123456",
        },
    )
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers, r.text
    assert appointments(scheduler) == 2


async def test_a_refusal_is_replayed_too(client: httpx.AsyncClient, scheduler: Scheduler) -> None:
    hold = await client.post(
        "/api/v1/holds",
        headers=AUTH,
        json={"service": "cleaning", "staff": "lee", "start": BOOK["start"], "holder": "someone"},
    )
    assert hold.status_code == 201
    first = await book(client, "order-1")
    assert first.status_code == 409 and first.json()["error"] == "slot_taken"
    await client.delete(f"/api/v1/holds/{hold.json()['id']}", headers=AUTH)
    # The time is free now, but this key's request was answered: the answer stands.
    again = await book(client, "order-1")
    assert (again.status_code, again.json()) == (409, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert appointments(scheduler) == 0
    assert (await book(client, "order-2")).status_code == 201


async def test_a_server_error_is_not_kept(
    client: httpx.AsyncClient, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = scheduler.book
    failures: list[BaseException] = [
        errors.Busy("the booking system is busy"),
        RuntimeError("the database went away"),
    ]

    async def flaky(**kw: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return await real(**kw)

    monkeypatch.setattr(scheduler, "book", flaky)
    r = await book(client, "order-1")
    assert r.status_code == 503, r.text
    with pytest.raises(RuntimeError):  # a 500 in production; the test transport raises it
        await book(client, "order-1")
    r = await book(client, "order-1")  # both failures released the key: this one runs
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers, r.text
    assert appointments(scheduler) == 1


async def test_a_duplicate_while_the_first_runs_is_told_to_wait(
    client: httpx.AsyncClient, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = scheduler.book
    inside, go_on = asyncio.Event(), asyncio.Event()

    async def slow(**kw: Any) -> Any:
        inside.set()
        await go_on.wait()
        return await real(**kw)

    monkeypatch.setattr(scheduler, "book", slow)
    first = asyncio.create_task(book(client, "order-1"))
    await asyncio.wait_for(inside.wait(), 10)
    r = await book(client, "order-1")
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "request_in_progress" and r.json()["retryable"] is True
    go_on.set()
    assert (await first).status_code == 201
    r = await book(client, "order-1")
    assert r.status_code == 201 and r.headers["Idempotent-Replayed"] == "true"
    assert appointments(scheduler) == 1


async def test_keys_expire_after_a_day(client: httpx.AsyncClient, scheduler: Scheduler) -> None:
    assert isinstance(scheduler.clock, FixedClock)
    assert (await book(client, "order-1")).status_code == 201
    scheduler.clock.at = NOW + timedelta(hours=23, minutes=59)
    r = await book(client, "order-1", BOOK | {"start": "2026-12-08T09:00:00-05:00"})
    assert r.status_code == 422  # still this key's request
    scheduler.clock.at = NOW + timedelta(hours=24)
    r = await book(client, "order-2", BOOK | {"start": "2026-12-09T09:00:00-05:00"})
    assert r.status_code == 201
    with session_scope(scheduler.engine) as s:  # the expired key was purged on the way
        assert [row.key for row in s.exec(select(IdempotentRequest))] == ["order-2"]
    r = await book(client, "order-1", BOOK | {"start": "2026-12-08T09:00:00-05:00"})
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers, r.text


async def test_a_claim_abandoned_by_a_dead_process_is_taken_over(
    client: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    from booking.idempotency import fingerprint

    body = {"business": None, "hold_id": None, "email": None, "notes": None} | BOOK
    with session_scope(scheduler.engine, write=True) as s:
        s.add(
            IdempotentRequest(
                business_id="clinic",
                key="order-1",
                status="in_progress",
                request_hash=fingerprint(
                    "POST /api/v1/appointments", body | {"business": "clinic"}
                ),
                created_at=NOW - timedelta(minutes=6),
            )
        )
    # The same caller's booking of another time under another key is not this key's work.
    assert (
        await book(client, "order-0", BOOK | {"start": "2026-12-07T10:00:00-05:00"})
    ).status_code == 201
    r = await book(client, "order-1")
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers, r.text
    assert r.json()["start"] == "2026-12-07T09:00:00-05:00"
    assert appointments(scheduler) == 2


def _answer_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first booked answer cannot be kept (the database went away just then)."""
    real = IdempotencyStore.finish
    failures = [RuntimeError("the database went away")]

    async def flaky(self: IdempotencyStore, claim: Claim, *, status: int, body: str) -> bool:
        if status == 201 and failures:
            raise failures.pop()
        return await real(self, claim, status=status, body=body)

    monkeypatch.setattr(IdempotencyStore, "finish", flaky)


@pytest.mark.parametrize("by_hold", [False, True], ids=["straight", "from-a-hold"])
async def test_a_booking_whose_answer_was_not_kept_is_the_answer_after_the_lease(
    client: httpx.AsyncClient, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, by_hold: bool
) -> None:
    assert isinstance(scheduler.clock, FixedClock)
    body = BOOK
    if by_hold:
        hold = await client.post(
            "/api/v1/holds",
            headers=AUTH,
            json={"service": "cleaning", "staff": "lee", "start": BOOK["start"], "holder": "web-1"},
        )
        assert hold.status_code == 201, hold.text
        body = {"hold_id": hold.json()["id"], "name": "Ann Smith", "phone": "(202) 555-0123"}
    _answer_not_kept(monkeypatch)
    first = await book(client, "order-1", body)
    assert first.status_code == 201, first.text  # booked, though the key still says "running"
    r = await book(client, "order-1", body)
    assert r.status_code == 409 and r.json()["error"] == "request_in_progress"
    # After the lease the retry takes the key over, and finds what its first attempt booked
    # instead of booking again (which would say slot_taken, or that the hold is gone).
    scheduler.clock.at = NOW + timedelta(minutes=6)
    r = await book(client, "order-1", body)
    assert r.status_code == 201, r.text
    assert r.headers["Idempotent-Replayed"] == "true"
    assert r.json() == first.json()
    r = await book(client, "order-1", body)  # and that answer is kept now
    assert (r.status_code, r.json(), r.headers["Idempotent-Replayed"]) == (
        201,
        first.json(),
        "true",
    )
    assert appointments(scheduler) == 1
    assert (
        count_rows(
            scheduler.engine, "SELECT count(*) FROM outboxevent WHERE type = 'booking.created'"
        )
        == 1
    )


async def test_a_claim_taken_over_is_no_longer_the_first_requests(scheduler: Scheduler) -> None:
    assert isinstance(scheduler.clock, FixedClock)
    store = IdempotencyStore(engine=scheduler.engine, clock=scheduler.clock)
    key = {"business_id": "clinic", "key": "order-1", "request_hash": "h"}
    first = await store.claim(**key)
    assert isinstance(first, Claim) and first.abandoned_at is None
    scheduler.clock.at = NOW + timedelta(minutes=6)  # the first looks dead: a retry takes over
    second = await store.claim(**key)
    assert isinstance(second, Claim) and second.abandoned_at == NOW
    # The first request, alive after all, can neither answer for the key nor give it back.
    assert await store.release(first) is False
    assert await store.finish(first, status=409, body='{"error": "slot_taken"}') is False
    with pytest.raises(RequestInProgress):
        await store.claim(**key)  # still the second request's
    assert await store.finish(second, status=201, body='{"id": "apt_1"}') is True
    assert await store.claim(**key) == Replay(status=201, body='{"id": "apt_1"}')
    assert await store.release(second) is False  # answered: nothing left to give back


async def test_a_request_that_lost_its_claim_cannot_give_it_away(
    client: httpx.AsyncClient, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request stalled past the lease, whose key a retry took over, fails at last: its
    release must not drop the retry's claim (a third attempt would then book as well)."""
    assert isinstance(scheduler.clock, FixedClock)
    real = scheduler.book
    inside = [asyncio.Event(), asyncio.Event()]
    go_on = [asyncio.Event(), asyncio.Event()]
    calls: list[int] = []

    async def stalling(**kw: Any) -> Any:
        n = len(calls)
        calls.append(n)
        if n < 2:
            inside[n].set()
            await go_on[n].wait()
            if n == 0:
                raise errors.Busy("the booking system is busy")
        return await real(**kw)

    monkeypatch.setattr(scheduler, "book", stalling)
    stalled = asyncio.create_task(book(client, "order-1"))
    await asyncio.wait_for(inside[0].wait(), 10)
    scheduler.clock.at = NOW + timedelta(minutes=6)
    retry = asyncio.create_task(book(client, "order-1"))
    await asyncio.wait_for(inside[1].wait(), 10)
    go_on[0].set()
    assert (await stalled).status_code == 503
    r = await book(client, "order-1")
    assert r.status_code == 409 and r.json()["error"] == "request_in_progress", r.text
    go_on[1].set()
    assert (await retry).status_code == 201
    r = await book(client, "order-1")
    assert r.status_code == 201 and r.headers["Idempotent-Replayed"] == "true"
    assert appointments(scheduler) == 1 and len(calls) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "clé", "tab\there"])
async def test_a_malformed_key_is_a_422(
    client: httpx.AsyncClient, scheduler: Scheduler, key: str
) -> None:
    r = await client.post(
        "/api/v1/appointments",
        json=BOOK,
        headers=[*AUTH.items(), ("Idempotency-Key", key.encode("latin-1"))],
    )
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "header.idempotency-key"
    assert appointments(scheduler) == 0
    assert (await book(client, "x" * 255)).status_code == 201  # the longest key is fine


async def test_racing_duplicates_book_once(client: httpx.AsyncClient, scheduler: Scheduler) -> None:
    answers = await asyncio.gather(*(book(client, "order-1") for _ in range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) >= 1 and set(codes) <= {201, 409}, [r.text for r in answers]
    assert all(r.json()["error"] == "request_in_progress" for r in answers if r.status_code == 409)
    assert appointments(scheduler) == 1


async def test_the_header_is_documented(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    op = schema["paths"]["/api/v1/appointments"]["post"]
    [param] = [p for p in op["parameters"] if p["name"] == "idempotency-key"]
    assert param["in"] == "header" and param["schema"]["anyOf"][0]["maxLength"] == 255
    assert "24 hours" in param["description"]
    assert "Idempotent-Replayed" in op["responses"]["201"]["headers"]
    assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorOut"
    )
