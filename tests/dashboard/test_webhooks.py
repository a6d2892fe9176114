"""Outgoing webhooks: Standard Webhooks signatures, delivery from the outbox to a real receiver on
loopback, retries with backoff, exactly-once fan-out across dispatchers, the owner's pages and the
JSON API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import standardwebhooks
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from booking import errors
from booking.clock import FixedClock
from booking.db import session_scope
from booking.models import OutboxEvent
from booking.scheduler import Scheduler
from dashboard.webhook_models import DeliveryStatus, WebhookDelivery
from dashboard.webhooks import RETRY_DELAYS, WebhookDispatcher, Webhooks, sign
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.conftest import count_rows
from tests.dashboard.conftest import API_KEY, csrf_of, seed_salon
from tests.fakes.loopback import LoopbackServer

START = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)  # Monday 09:00 in New York


# ---- a receiver on loopback ---------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps what arrives and answers from a script
    (status codes, or "hang" to answer only after the test is over; 204 once it runs out)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._script: list[int | str] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        self._server = LoopbackServer(app, name="webhook receiver")
        self.url = f"http://127.0.0.1:{self._server.port}/hook"

    def start(self) -> Receiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

    def script(self, *answers: int | str) -> None:
        self._script = list(answers)

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self._changed:
            self.received.append(Received(dict(request.headers), body))
            answer = self._script.pop(0) if self._script else 204
            self._changed.notify_all()
        if answer == "hang":
            await asyncio.to_thread(self._stopping.wait, 10)
            return PlainTextResponse("too late", status_code=200)
        if answer == 204:
            return Response(status_code=204)
        return PlainTextResponse("ok", status_code=int(answer))

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.received) >= count, timeout), (
                f"expected {count} deliveries, got {len(self.received)}"
            )
            return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def verify_independently(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The Standard Webhooks check, written from the spec without the project's code."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in headers["webhook-signature"].split(" "))
    assert hmac.compare_digest(versions["v1"], expected)


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def store(scheduler: Scheduler) -> Webhooks:
    return Webhooks(scheduler.engine)


@pytest.fixture
async def dispatcher(scheduler: Scheduler) -> AsyncIterator[WebhookDispatcher]:
    """A dispatcher on the real clock (receivers check the timestamp against theirs)."""
    async with WebhookDispatcher(scheduler.engine, timeout=2.0) as d:
        yield d


async def book(scheduler: Scheduler, *, minutes: int = 0, phone: str = "+12025550001") -> str:
    row = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=START + timedelta(minutes=minutes),
        name="Ann Smith",
        phone=phone,
    )
    return row.id


def add_event(
    engine: Engine, business_id: str = "clinic", type_: str = "booking.created", **payload: Any
) -> str:
    with session_scope(engine, write=True) as s:
        row = OutboxEvent(
            business_id=business_id, type=type_, payload={"business_id": business_id, **payload}
        )
        s.add(row)
        s.flush()
        return row.id


def deliveries(engine: Engine) -> list[WebhookDelivery]:
    with session_scope(engine) as s:
        return list(s.exec(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


# ---- signing -------------------------------------------------------------------------------


def test_signature_matches_the_spec_test_vector() -> None:
    # The example from the Standard Webhooks reference libraries' tests.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert (
        sign(
            secret,
            msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp=1614265330,
            body='{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


async def test_new_endpoints_get_a_spec_shaped_secret(store: Webhooks) -> None:
    hook = await store.create(
        business_id="clinic", url="https://example.test/hook", event_types=["booking.created"]
    )
    assert hook.secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(hook.secret[6:])) <= 64
    other = await store.create(
        business_id="clinic", url="https://example.test/hook", event_types=["booking.created"]
    )
    assert other.secret != hook.secret


# ---- delivery ------------------------------------------------------------------------------


async def test_a_booking_is_delivered_signed_to_the_receiver(
    scheduler: Scheduler,
    store: Webhooks,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
) -> None:
    hook = await store.create(
        business_id="clinic", url=receiver.url, event_types=["booking.created", "booking.cancelled"]
    )
    appointment_id = await book(scheduler)
    assert await dispatcher.run_once() == 1
    [got] = receiver.wait_for(1)
    # The reference library accepts it (it also checks the timestamp is within 5 minutes).
    body = standardwebhooks.Webhook(hook.secret).verify(got.body, got.headers)
    verify_independently(hook.secret, got.headers, got.body)
    assert body["type"] == "booking.created"
    assert body["data"]["id"] == appointment_id
    assert body["data"]["contact"]["name"] == "Ann Smith"
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert got.headers["content-type"] == "application/json"
    [row] = deliveries(scheduler.engine)
    assert got.headers["webhook-id"] == row.event_id
    assert row.status == DeliveryStatus.DELIVERED and row.attempts == 1
    assert row.last_status_code == 204 and row.last_response_ms is not None
    # Nothing is sent twice.
    assert await dispatcher.run_once() == 0
    await scheduler.cancel(business_id="clinic", appointment_id=appointment_id)
    await dispatcher.run_once()
    assert [r.json["type"] for r in receiver.wait_for(2)] == [
        "booking.created",
        "booking.cancelled",
    ]


async def test_only_subscribed_events_of_the_own_business_are_sent(
    scheduler: Scheduler,
    store: Webhooks,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
) -> None:
    seed_salon(scheduler.engine)
    await store.create(business_id="clinic", url=receiver.url, event_types=["lead.created"])
    paused = await store.create(
        business_id="clinic", url=receiver.url, event_types=["lead.created"]
    )
    await store.update(business_id="clinic", webhook_id=paused.id, active=False)
    await store.create(
        business_id="salon",
        url=receiver.url + "?salon",
        event_types=["booking.created", "lead.created"],
    )
    await book(scheduler)  # booking.created: not subscribed by the clinic's endpoint
    await scheduler.record_lead(
        business_id="clinic", phone="+12025550002", name="Cara", reason="whitening price"
    )
    await dispatcher.run_once()
    [got] = receiver.wait_for(1)
    assert got.json["type"] == "lead.created" and got.json["data"]["name"] == "Cara"
    assert len(deliveries(scheduler.engine)) == 1
    assert count_rows(scheduler.engine, "SELECT count(*) FROM webhook_fanout") == 2


async def test_a_failed_attempt_is_retried_with_backoff(
    scheduler: Scheduler,
    store: Webhooks,
    receiver: Receiver,
) -> None:
    clock = FixedClock(datetime.now(UTC))
    await store.create(business_id="clinic", url=receiver.url, event_types=["booking.created"])
    add_event(scheduler.engine, id="apt_1")
    receiver.script(500, 503)
    async with WebhookDispatcher(scheduler.engine, clock=clock, timeout=2.0) as dispatcher:
        assert await dispatcher.run_once() == 1
        [row] = deliveries(scheduler.engine)
        assert row.status == DeliveryStatus.PENDING and row.attempts == 1
        assert row.last_status_code == 500
        assert row.next_attempt_at == clock.at + timedelta(seconds=RETRY_DELAYS[0])
        clock.at += timedelta(seconds=RETRY_DELAYS[0] - 1)
        assert await dispatcher.run_once() == 0  # not due yet
        clock.at += timedelta(seconds=1)
        assert await dispatcher.run_once() == 1
        [row] = deliveries(scheduler.engine)
        assert row.attempts == 2 and row.last_status_code == 503
        assert row.next_attempt_at == clock.at + timedelta(seconds=RETRY_DELAYS[1])
        clock.at = row.next_attempt_at
        assert await dispatcher.run_once() == 1
    got = receiver.wait_for(3)
    assert len({r.headers["webhook-id"] for r in got}) == 1  # the same message every time
    assert len({r.body for r in got}) == 1
    [row] = deliveries(scheduler.engine)
    assert row.status == DeliveryStatus.DELIVERED and row.attempts == 3


async def test_a_slow_endpoint_times_out_and_fails_after_the_last_attempt(
    scheduler: Scheduler,
    store: Webhooks,
    receiver: Receiver,
) -> None:
    clock = FixedClock(datetime.now(UTC))
    await store.create(business_id="clinic", url=receiver.url, event_types=["booking.created"])
    add_event(scheduler.engine, id="apt_1")
    receiver.script("hang", 500, 500)
    async with WebhookDispatcher(
        scheduler.engine, clock=clock, timeout=0.3, retry_delays=(5, 60)
    ) as dispatcher:
        await dispatcher.run_once()
        [row] = deliveries(scheduler.engine)
        assert row.status == DeliveryStatus.PENDING and row.last_status_code is None
        assert "timed out" in (row.last_error or "")
        assert row.next_attempt_at == clock.at + timedelta(seconds=5)
        for delay in (5, 60):
            clock.at += timedelta(seconds=delay)
            assert await dispatcher.run_once() == 1
        clock.at += timedelta(days=1)
        assert await dispatcher.run_once() == 0  # no attempts left
    [row] = deliveries(scheduler.engine)
    assert row.status == DeliveryStatus.FAILED and row.attempts == 3
    assert row.last_status_code == 500


async def test_an_unreachable_endpoint_is_logged_and_retried(
    scheduler: Scheduler,
    store: Webhooks,
    dispatcher: WebhookDispatcher,
) -> None:
    await store.create(
        business_id="clinic",
        url="http://127.0.0.1:9/nothing-listens",
        event_types=["booking.created"],
    )
    add_event(scheduler.engine)
    await dispatcher.run_once()
    [row] = deliveries(scheduler.engine)
    assert row.status == DeliveryStatus.PENDING and row.attempts == 1
    assert row.last_status_code is None and "Connect" in (row.last_error or "")


async def test_two_dispatchers_deliver_each_event_once(
    scheduler: Scheduler,
    store: Webhooks,
    receiver: Receiver,
) -> None:
    hook = await store.create(
        business_id="clinic", url=receiver.url, event_types=["booking.created"]
    )
    events = {add_event(scheduler.engine, n=n) for n in range(30)}
    async with (
        WebhookDispatcher(scheduler.engine, batch=7) as one,
        WebhookDispatcher(scheduler.engine, batch=7) as two,
    ):

        async def drain(d: WebhookDispatcher) -> None:
            for _ in range(20):
                await d.run_once()

        await asyncio.gather(drain(one), drain(two))
    got = receiver.wait_for(30)
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(events)
    assert all(standardwebhooks.Webhook(hook.secret).verify(r.body, r.headers) for r in got)
    assert (
        count_rows(
            scheduler.engine,
            "SELECT count(*) FROM webhook_delivery WHERE status = 'delivered' AND attempts = 1",
        )
        == 30
    )


async def test_an_event_fans_out_once_across_restarts(
    scheduler: Scheduler,
    store: Webhooks,
    receiver: Receiver,
) -> None:
    await store.create(business_id="clinic", url=receiver.url, event_types=["booking.created"])
    add_event(scheduler.engine)
    for _ in range(2):
        async with WebhookDispatcher(scheduler.engine) as dispatcher:
            await dispatcher.run_once()
    receiver.wait_for(1)
    assert len(deliveries(scheduler.engine)) == 1
    assert len(receiver.received) == 1


async def test_the_background_task_delivers_new_events(
    scheduler: Scheduler,
    store: Webhooks,
    receiver: Receiver,
) -> None:
    await store.create(business_id="clinic", url=receiver.url, event_types=["booking.created"])
    async with WebhookDispatcher(scheduler.engine, poll_interval=0.05) as dispatcher:
        dispatcher.start()
        await book(scheduler)
        [got] = await asyncio.to_thread(receiver.wait_for, 1)
    assert got.json["type"] == "booking.created"


async def test_the_app_runs_the_dispatcher_while_it_serves(
    scheduler: Scheduler,
    store: Webhooks,
    receiver: Receiver,
) -> None:
    settings = Settings(
        _env_file=None,
        api_key=SecretStr(API_KEY),  # type: ignore[call-arg]
        allow_private_urls=True,
    )
    app = create_app(settings, scheduler=scheduler)
    await store.create(business_id="clinic", url=receiver.url, event_types=["lead.created"])
    async with app.router.lifespan_context(app):
        await scheduler.record_lead(business_id="clinic", phone="+12025550002", name="Cara")
        [got] = await asyncio.to_thread(receiver.wait_for, 1)
    assert got.json["data"]["name"] == "Cara"
    assert app.state.webhook_dispatcher is None  # stopped with the app


async def test_finished_deliveries_are_pruned_after_a_month(
    scheduler: Scheduler,
    store: Webhooks,
    receiver: Receiver,
) -> None:
    clock = FixedClock(datetime.now(UTC))
    await store.create(business_id="clinic", url=receiver.url, event_types=["booking.created"])
    add_event(scheduler.engine)
    receiver.script(204, 500)
    async with WebhookDispatcher(scheduler.engine, clock=clock) as dispatcher:
        await dispatcher.run_once()
        add_event(scheduler.engine)
        await dispatcher.run_once()  # this one stays pending, waiting for its retry
        clock.at += timedelta(days=29)
        assert await dispatcher.prune() == 0
        clock.at += timedelta(days=2)
        assert await dispatcher.prune() == 1
    assert [d.status for d in deliveries(scheduler.engine)] == ["pending"]


async def test_a_test_event_is_delivered_at_once_and_logged(
    scheduler: Scheduler,
    store: Webhooks,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
) -> None:
    hook = await store.create(
        business_id="clinic", url=receiver.url, event_types=["booking.created"]
    )
    row = await dispatcher.send_test(business_id="clinic", webhook_id=hook.id)
    [got] = receiver.wait_for(1)
    body = standardwebhooks.Webhook(hook.secret).verify(got.body, got.headers)
    assert body["type"] == "webhook.test"
    assert row.status == DeliveryStatus.DELIVERED and row.last_status_code == 204
    # A failed test is not retried.
    receiver.script(500)
    row = await dispatcher.send_test(business_id="clinic", webhook_id=hook.id)
    assert row.status == DeliveryStatus.FAILED and row.last_status_code == 500
    assert await dispatcher.run_once() == 0
    log = await store.deliveries(business_id="clinic", webhook_id=hook.id)
    assert [d.status for d in log] == ["failed", "delivered"]


async def test_endpoints_are_validated(store: Webhooks) -> None:
    for url in ("ftp://example.test/", "example.test/hook", "https://", "javascript:alert(1)"):
        with pytest.raises(errors.InvalidRequest, match="http"):
            await store.create(business_id="clinic", url=url, event_types=["lead.created"])
    with pytest.raises(errors.InvalidRequest, match="unknown event"):
        await store.create(
            business_id="clinic", url="https://example.test/", event_types=["webhook.test"]
        )
    with pytest.raises(errors.InvalidRequest, match="at least one"):
        await store.create(business_id="clinic", url="https://example.test/", event_types=[])


# ---- the JSON API --------------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def api(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as c:
        yield c


async def test_the_api_manages_webhooks(api: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await api.get("/api/v1/webhooks")).status_code == 401
    r = await api.post(
        "/api/v1/webhooks",
        headers=AUTH,
        json={"business": "clinic", "url": receiver.url, "event_types": ["booking.created"]},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and created["active"] is True
    r = await api.get("/api/v1/webhooks", headers=AUTH, params={"business": "clinic"})
    assert [w["id"] for w in r.json()] == [created["id"]]
    assert "secret" not in r.json()[0]  # shown when created, or asked for one by one
    r = await api.get(
        f"/api/v1/webhooks/{created['id']}", headers=AUTH, params={"business": "clinic"}
    )
    assert r.json()["secret"] == created["secret"]
    r = await api.patch(
        f"/api/v1/webhooks/{created['id']}",
        headers=AUTH,
        json={
            "business": "clinic",
            "event_types": ["lead.created", "booking.created"],
            "active": False,
        },
    )
    assert r.status_code == 200 and r.json()["event_types"] == ["booking.created", "lead.created"]
    r = await api.post(
        f"/api/v1/webhooks/{created['id']}/test", headers=AUTH, params={"business": "clinic"}
    )
    assert r.status_code == 200 and r.json()["status"] == "delivered"
    r = await api.get(
        f"/api/v1/webhooks/{created['id']}/deliveries", headers=AUTH, params={"business": "clinic"}
    )
    assert [d["event_type"] for d in r.json()] == ["webhook.test"]
    r = await api.get(
        f"/api/v1/webhooks/{created['id']}", headers=AUTH, params={"business": "salon"}
    )
    assert r.status_code == 404  # another business's endpoint does not exist for it
    r = await api.post(
        "/api/v1/webhooks",
        headers=AUTH,
        json={
            "business": "clinic",
            "url": "file:///etc/passwd",
            "event_types": ["booking.created"],
        },
    )
    assert r.status_code == 422 and "http" in r.json()["message"]
    r = await api.delete(
        f"/api/v1/webhooks/{created['id']}", headers=AUTH, params={"business": "clinic"}
    )
    assert r.status_code == 204
    assert (
        await api.get("/api/v1/webhooks", headers=AUTH, params={"business": "clinic"})
    ).json() == []


# ---- the integrations page -----------------------------------------------------------------


async def submit(
    client: httpx.AsyncClient, page_url: str, action: str, data: dict[str, str | list[str]]
) -> httpx.Response:
    """Post a form as the browser does, with the CSRF token of the page it is on."""
    page = await client.get(page_url)
    assert page.status_code == 200, page.text
    return await client.post(action, data={**data, "csrf_token": csrf_of(page.text)})


async def test_the_owner_adds_tests_and_deletes_a_webhook(
    owner: httpx.AsyncClient,
    receiver: Receiver,
    scheduler: Scheduler,
) -> None:
    page = await owner.get("/integrations")
    assert page.status_code == 200 and "No webhooks yet" in page.text
    r = await submit(
        owner,
        "/integrations",
        "/integrations/webhooks",
        {
            "url": receiver.url,
            "event_types": ["booking.created", "lead.created"],
            "description": "Zapier",
        },
    )
    assert r.status_code == 200, r.text
    secret = r.text.split("whsec_", 1)[1].split("<", 1)[0]
    assert "Copy this signing secret now" in r.text
    [hook] = await Webhooks(scheduler.engine).of_business("clinic")
    assert hook.secret == "whsec_" + secret
    assert hook.event_types == ["booking.created", "lead.created"]
    page = await owner.get("/integrations")
    assert receiver.url in page.text and hook.secret not in page.text
    # The secret again, on demand.
    r = await owner.post(
        f"/integrations/webhooks/{hook.id}/secret",
        headers={"X-CSRF-Token": csrf_of(page.text), "HX-Request": "true"},
    )
    assert r.status_code == 200 and hook.secret in r.text
    # The test button: delivered at once, signed, and in the log.
    r = await owner.post(
        f"/integrations/webhooks/{hook.id}/test",
        headers={"X-CSRF-Token": csrf_of(page.text), "HX-Request": "true"},
    )
    assert r.status_code == 200 and "delivered" in r.text.lower()
    [got] = receiver.wait_for(1)
    assert standardwebhooks.Webhook(hook.secret).verify(got.body, got.headers)["type"] == (
        "webhook.test"
    )
    log = await owner.get(f"/integrations/webhooks/{hook.id}")
    assert "webhook.test" in log.text and "204" in log.text
    r = await submit(owner, "/integrations", f"/integrations/webhooks/{hook.id}/delete", {})
    assert r.status_code == 303
    assert await Webhooks(scheduler.engine).of_business("clinic") == []


async def test_a_bad_url_is_explained_on_the_page(owner: httpx.AsyncClient) -> None:
    r = await submit(
        owner,
        "/integrations",
        "/integrations/webhooks",
        {"url": "ftp://example.test", "event_types": ["booking.created"]},
    )
    assert r.status_code == 422 and "must start with http" in r.text


async def test_integrations_are_for_the_owner_of_that_business_only(
    owner: httpx.AsyncClient,
    staff: httpx.AsyncClient,
    client_for: Any,
    scheduler: Scheduler,
    anonymous: httpx.AsyncClient,
) -> None:
    hook = await Webhooks(scheduler.engine).create(
        business_id="clinic", url="https://example.test/hook", event_types=["lead.created"]
    )
    assert (await staff.get("/integrations")).status_code == 403
    assert (await anonymous.get("/integrations")).status_code == 303
    async with client_for("owner@salon.test") as salon:
        page = await salon.get("/integrations")
        assert "example.test" not in page.text
        assert (await salon.get(f"/integrations/webhooks/{hook.id}")).status_code == 404
        r = await salon.post(
            f"/integrations/webhooks/{hook.id}/delete", data={"csrf_token": csrf_of(page.text)}
        )
        assert r.status_code == 404
    page = await owner.get("/integrations")
    r = await owner.post(f"/integrations/webhooks/{hook.id}/delete", data={"csrf_token": "forged"})
    assert r.status_code == 403
    assert len(await Webhooks(scheduler.engine).of_business("clinic")) == 1
