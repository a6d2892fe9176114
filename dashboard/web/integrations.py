"""Integrations for owners: outgoing webhooks, as pages (`router`) and as JSON (`api_router`).

The pages list, add and delete endpoints, show a signing secret once and again on demand, send a
test event at once and show each endpoint's delivery log. The JSON API does the same under
/api/v1/webhooks with the API key. Both go through `dashboard.webhooks`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from booking import errors
from booking.scheduler import Scheduler
from dashboard.api import ERRORS, get_scheduler, require_api_key
from dashboard.http_errors import status_for
from dashboard.web import db
from dashboard.web.auth import OwnerUser, PageError, verify_csrf
from dashboard.web.render import add_nav, render
from dashboard.webhook_models import EVENT_TYPES, Webhook, WebhookDelivery
from dashboard.webhooks import WebhookDispatcher, Webhooks

router = APIRouter(include_in_schema=False)
api_router = APIRouter(
    prefix="/api/v1", tags=["webhooks"], responses=ERRORS, dependencies=[Depends(require_api_key)]
)
add_nav("Integrations", "/integrations")

LOG_SIZE = 50


def _store(request: Request) -> Webhooks:
    return Webhooks(
        db.scheduler(request).engine, allow_private=request.app.state.settings.allow_private_urls
    )


async def dispatcher(request: Request) -> AsyncIterator[WebhookDispatcher]:
    """The app's running dispatcher, or one for this request when none runs (tests, CLI)."""
    running: WebhookDispatcher | None = getattr(request.app.state, "webhook_dispatcher", None)
    if running is not None:
        yield running
        return
    async with WebhookDispatcher(db.scheduler(request).engine) as one:
        yield one


Dispatcher = Annotated[WebhookDispatcher, Depends(dispatcher)]


async def _own(request: Request, business_id: str, webhook_id: str) -> Webhook:
    try:
        return await _store(request).get(business_id=business_id, webhook_id=webhook_id)
    except errors.NotFound:
        raise PageError(404, "There is no such webhook.") from None


# ---- pages --------------------------------------------------------------------------------


async def _list_page(
    request: Request,
    business_id: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    created: Webhook | None = None,
    form: dict[str, object] | None = None,
) -> Response:
    store = _store(request)
    hooks = await store.of_business(business_id)
    last = {
        h.id: next(
            iter(await store.deliveries(business_id=business_id, webhook_id=h.id, limit=1)), None
        )
        for h in hooks
    }
    return render(
        request,
        "integrations.html",
        status_code=status_code,
        hooks=hooks,
        last=last,
        event_types=EVENT_TYPES,
        error=error,
        created=created,
        form=form or {"url": "", "description": "", "event_types": list(EVENT_TYPES)},
    )


@router.get("/integrations")
async def integrations_page(request: Request, user: OwnerUser) -> Response:
    return await _list_page(request, user.business_id)


@router.post("/integrations/webhooks", dependencies=[Depends(verify_csrf)])
async def add_webhook(
    request: Request,
    user: OwnerUser,
    url: Annotated[str, Form()] = "",
    event_types: Annotated[list[str] | None, Form()] = None,
    description: Annotated[str, Form()] = "",
) -> Response:
    chosen = event_types or []
    try:
        hook = await _store(request).create(
            business_id=user.business_id, url=url, event_types=chosen, description=description
        )
    except errors.InvalidRequest as exc:
        return await _list_page(
            request,
            user.business_id,
            status_code=status_for(exc),
            error=exc.message,
            form={"url": url, "description": description, "event_types": chosen},
        )
    # The page that shows the new secret: the one time it appears without asking.
    return await _list_page(request, user.business_id, created=hook)


@router.get("/integrations/webhooks/{webhook_id}")
async def webhook_page(request: Request, webhook_id: str, user: OwnerUser) -> Response:
    hook = await _own(request, user.business_id, webhook_id)
    log = await _store(request).deliveries(
        business_id=user.business_id, webhook_id=hook.id, limit=LOG_SIZE
    )
    business = await db.scheduler(request).business(user.business_id)
    return render(
        request,
        "integrations_webhook.html",
        hook=hook,
        log=log,
        event_types=EVENT_TYPES,
        tz=business.timezone,
        error=None,
    )


@router.post("/integrations/webhooks/{webhook_id}", dependencies=[Depends(verify_csrf)])
async def edit_webhook(
    request: Request,
    webhook_id: str,
    user: OwnerUser,
    event_types: Annotated[list[str] | None, Form()] = None,
    active: Annotated[str, Form()] = "",
) -> Response:
    await _own(request, user.business_id, webhook_id)
    try:
        await _store(request).update(
            business_id=user.business_id,
            webhook_id=webhook_id,
            event_types=event_types or [],
            active=active == "on",
        )
    except errors.InvalidRequest as exc:
        hook = await _own(request, user.business_id, webhook_id)
        log = await _store(request).deliveries(
            business_id=user.business_id, webhook_id=hook.id, limit=LOG_SIZE
        )
        business = await db.scheduler(request).business(user.business_id)
        return render(
            request,
            "integrations_webhook.html",
            status_code=status_for(exc),
            hook=hook,
            log=log,
            event_types=EVENT_TYPES,
            tz=business.timezone,
            error=exc.message,
        )
    return RedirectResponse(f"/integrations/webhooks/{webhook_id}", status_code=303)


@router.post("/integrations/webhooks/{webhook_id}/secret", dependencies=[Depends(verify_csrf)])
async def reveal_secret(request: Request, webhook_id: str, user: OwnerUser) -> Response:
    hook = await _own(request, user.business_id, webhook_id)
    return render(request, "integrations_secret.html", hook=hook)


@router.post("/integrations/webhooks/{webhook_id}/test", dependencies=[Depends(verify_csrf)])
async def send_test(
    request: Request, webhook_id: str, user: OwnerUser, sender: Dispatcher
) -> Response:
    hook = await _own(request, user.business_id, webhook_id)
    delivery = await sender.send_test(business_id=user.business_id, webhook_id=hook.id)
    if request.headers.get("HX-Request"):
        return render(request, "integrations_test_result.html", delivery=delivery)
    return RedirectResponse(f"/integrations/webhooks/{webhook_id}", status_code=303)


@router.post("/integrations/webhooks/{webhook_id}/delete", dependencies=[Depends(verify_csrf)])
async def delete_webhook(request: Request, webhook_id: str, user: OwnerUser) -> Response:
    await _own(request, user.business_id, webhook_id)
    await _store(request).delete(business_id=user.business_id, webhook_id=webhook_id)
    return RedirectResponse("/integrations", status_code=303)


# ---- JSON API -----------------------------------------------------------------------------

SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
BusinessQ = Annotated[str | None, Query(description="business id; optional while there is one")]


class WebhookIn(BaseModel):
    business: str | None = None
    url: str = Field(description="http(s) URL that receives signed POSTs")
    event_types: list[str] = Field(
        default_factory=lambda: list(EVENT_TYPES), description=f"any of {', '.join(EVENT_TYPES)}"
    )
    description: str | None = Field(default=None, max_length=200)


class WebhookPatch(BaseModel):
    business: str | None = None
    url: str | None = None
    event_types: list[str] | None = None
    active: bool | None = None
    description: str | None = Field(default=None, max_length=200)


class WebhookOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    active: bool
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Webhook) -> WebhookOut:
        return cls(
            id=row.id,
            url=row.url,
            event_types=row.event_types,
            active=row.active,
            description=row.description,
            created_at=row.created_at,
        )


class WebhookWithSecret(WebhookOut):
    secret: str = Field(description="whsec_...: verify signatures with it (Standard Webhooks)")

    @classmethod
    def of(cls, row: Webhook) -> WebhookWithSecret:
        return cls(**WebhookOut.of(row).model_dump(), secret=row.secret)


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_response_ms: int | None
    last_attempt_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=row.id,
            event_id=row.event_id,
            event_type=row.event_type,
            status=row.status,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            last_response_ms=row.last_response_ms,
            last_attempt_at=row.last_attempt_at,
            created_at=row.created_at,
        )


@api_router.get("/webhooks", response_model=list[WebhookOut])
async def api_list(
    request: Request, scheduler: SchedulerDep, business: BusinessQ = None
) -> list[WebhookOut]:
    bid = await scheduler.resolve_business(business)
    return [WebhookOut.of(h) for h in await _store(request).of_business(bid)]


@api_router.post("/webhooks", response_model=WebhookWithSecret, status_code=status.HTTP_201_CREATED)
async def api_create(
    request: Request, body: WebhookIn, scheduler: SchedulerDep
) -> WebhookWithSecret:
    bid = await scheduler.resolve_business(body.business)
    row = await _store(request).create(
        business_id=bid, url=body.url, event_types=body.event_types, description=body.description
    )
    return WebhookWithSecret.of(row)


@api_router.get("/webhooks/{webhook_id}", response_model=WebhookWithSecret)
async def api_get(
    request: Request, webhook_id: str, scheduler: SchedulerDep, business: BusinessQ = None
) -> WebhookWithSecret:
    bid = await scheduler.resolve_business(business)
    return WebhookWithSecret.of(await _store(request).get(business_id=bid, webhook_id=webhook_id))


@api_router.patch("/webhooks/{webhook_id}", response_model=WebhookOut)
async def api_update(
    request: Request, webhook_id: str, body: WebhookPatch, scheduler: SchedulerDep
) -> WebhookOut:
    bid = await scheduler.resolve_business(body.business)
    row = await _store(request).update(
        business_id=bid,
        webhook_id=webhook_id,
        url=body.url,
        event_types=body.event_types,
        active=body.active,
        description=body.description,
    )
    return WebhookOut.of(row)


@api_router.delete("/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def api_delete(
    request: Request, webhook_id: str, scheduler: SchedulerDep, business: BusinessQ = None
) -> Response:
    bid = await scheduler.resolve_business(business)
    await _store(request).delete(business_id=bid, webhook_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@api_router.get("/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryOut])
async def api_deliveries(
    request: Request,
    webhook_id: str,
    scheduler: SchedulerDep,
    business: BusinessQ = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DeliveryOut]:
    bid = await scheduler.resolve_business(business)
    rows = await _store(request).deliveries(business_id=bid, webhook_id=webhook_id, limit=limit)
    return [DeliveryOut.of(r) for r in rows]


@api_router.post("/webhooks/{webhook_id}/test", response_model=DeliveryOut)
async def api_test(
    webhook_id: str, scheduler: SchedulerDep, sender: Dispatcher, business: BusinessQ = None
) -> DeliveryOut:
    """Send a signed `webhook.test` event now; the answer is how the delivery went."""
    bid = await scheduler.resolve_business(business)
    return DeliveryOut.of(await sender.send_test(business_id=bid, webhook_id=webhook_id))
