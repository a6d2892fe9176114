"""Builds the web app from settings: the composition root of everything the app serves.

The scheduler and calendar service come from `wiring`; the app's lifespan builds the services
the routers use and closes them at shutdown (`app.state.scheduler`, `.calendar_service`,
`.switchboard`, `.tryit_chats`), and, unless `FRONTDESK_RUN_JOBS` is off, the background jobs
(`frontdesk.jobs.JobRunner`). No router builds anything of its own.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from agent.llm import make_llm, warm_up
from booking.calls import CallLog
from booking.conversations import ConversationStore
from booking.scheduler import Scheduler
from booking.sms_outbox import SmsStore
from calendars import web as calendar_web
from dashboard import api, http_errors, staff_api, web, webhooks
from dashboard.web import auth as web_auth
from dashboard.web.tryit import WebChats
from frontdesk import draining, jobs, metrics, web_security
from frontdesk.readiness import Readiness
from frontdesk.settings import Settings
from frontdesk.wiring import build_scheduler, calendar_service, llm_config
from telephony import messaging, voice
from telephony.signature import TwilioSignature
from telephony.sms_replies import SmsReplies
from telephony.sms_threads import SmsThreads
from telephony.switchboard import Switchboard

log = logging.getLogger(__name__)

__all__ = ["build_scheduler", "build_switchboard", "calendar_service", "create_app"]


def build_switchboard(settings: Settings, scheduler: Scheduler) -> Switchboard:
    """The phone side: Twilio's signature check and texts, the LLM, the voice settings."""
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
    sms = None
    if settings.twilio_account_sid and token:
        sms = metrics.CountedSmsSender(
            account_sid=settings.twilio_account_sid,
            auth_token=token,
            api_base_url=settings.twilio_api_base_url,
        )
    else:
        log.warning("Twilio credentials are not set: confirmation texts are off")
    llm = llm_config(settings)
    return Switchboard(
        scheduler=scheduler,
        calls=CallLog.over(scheduler.engine, scheduler.clock),
        llm=make_llm(llm),
        model=llm.model,
        signature=TwilioSignature(auth_token=token, public_base_url=settings.public_base_url),
        voice_mode=settings.voice_mode,
        language=settings.voice_language,
        tts_voice=settings.voice_tts_voice,
        llm_timeout=llm.timeout,
        sms=sms,
        call_idle_seconds=settings.call_idle_seconds,
        agent_observer=metrics.AgentMetrics(),
    )


async def _authorize_linking(request: Request, staff_id: str) -> str:
    """Dashboard users link their own calendars (owners anyone's); scripts use the API key."""
    user = await web_auth.optional_user(request)
    if user is not None:
        if not user.may_see_staff(staff_id):
            raise HTTPException(403, "you may only link your own calendars")
        return user.business_id
    try:
        api.require_api_key(
            request, request.headers.get("authorization"), request.headers.get("x-api-key")
        )
    except HTTPException:
        if calendar_web.wants_api_answer(request):
            raise  # a script (a key sent, or JSON asked for): 401, not a log-in page
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise web_auth.LoginRequired(path) from None
    scheduler: Scheduler = request.app.state.scheduler
    return await scheduler.resolve_business(request.query_params.get("business"))


async def _verify_linking_form(request: Request) -> None:
    if await web_auth.optional_user(request) is not None:
        await web_auth.verify_csrf(request)
    # Otherwise the API key is checked by `_authorize_linking`: no cookie, no CSRF.


def create_app(settings: Settings, *, scheduler: Scheduler | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each thing is closed by the stack as soon as it is built, last built first closed:
        # a failure while starting, or a close that raises, still closes everything else.
        async with contextlib.AsyncExitStack() as stack:
            if getattr(app.state, "scheduler", None) is None:
                app.state.scheduler = build_scheduler(settings)
            stack.callback(app.state.scheduler.engine.dispose)
            if app.state.scheduler.observer is None:
                app.state.scheduler.observer = metrics.SchedulerMetrics()
            if app.state.readiness is None:
                app.state.readiness = Readiness(app.state.scheduler.engine)
            app.state.readiness.draining = False
            service = calendar_service(app.state.scheduler)
            app.state.calendar_service = service
            if service is not None:
                stack.push_async_callback(service.close)
            # Kept for the dashboard's test sends; the job runner below runs its deliveries.
            dispatcher = webhooks.start_dispatcher(app, observer=jobs.webhook_outcome, run=False)
            stack.push_async_callback(webhooks.stop_dispatcher, app)
            stack.push_async_callback(app.state.tryit_chats.aclose)
            if app.state.tryit_chats.store is None:
                # Every chat turn is saved, so the next one may land on any worker.
                app.state.tryit_chats.store = ConversationStore.over(
                    app.state.scheduler.engine, app.state.scheduler.clock
                )
            texts = jobs.sms_outbox(settings, app.state.scheduler)
            if texts is not None:
                stack.push_async_callback(texts.aclose)
            app.state.sms_replies = SmsReplies(
                app.state.scheduler,
                texts.store
                if texts is not None
                else SmsStore.over(app.state.scheduler.engine, app.state.scheduler.clock),
            )
            if getattr(app.state, "switchboard", None) is None:
                app.state.switchboard = build_switchboard(settings, app.state.scheduler)
                app.state.switchboard.texts = texts  # durable confirmations (the outbox)
            board = app.state.switchboard
            if board.store is None:
                # Every call's state is saved as each turn ends: any worker can carry it on.
                board.store = ConversationStore.over(
                    app.state.scheduler.engine, app.state.scheduler.clock
                )
            stack.push_async_callback(board.aclose)
            app.state.sms_replies.threads = SmsThreads(board)
            if settings.run_jobs:
                runner = jobs.job_runner(
                    settings,
                    app.state.scheduler,
                    calendars=service,
                    webhooks=dispatcher,
                    sms=texts,
                    switchboard=app.state.switchboard,
                )
                await runner.start()
                stack.push_async_callback(runner.aclose)
                app.state.job_runner = runner
            await warm_up(app.state.switchboard.llm)
            # A full garbage collection walks every object in the process, most of them the
            # code and models loaded at start-up, and stalls every live call for a fifth of a
            # second. Those live as long as the process: keep them out of the collector's
            # sight while calls are served.
            gc.freeze()
            stack.callback(gc.unfreeze)
            stack.callback(setattr, app.state.readiness, "draining", True)  # /readyz: no new calls
            drain = draining.Drain(
                grace=settings.shutdown_grace_seconds,
                on_drain=partial(setattr, app.state.readiness, "draining", True),
            )
            if drain.install():
                stack.callback(drain.uninstall)
            yield

    # The docs pages are added by web_security, each with the policy its CDN scripts need.
    app = web_security.SecureFastAPI(
        title="Frontdesk",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        allowed_hosts=settings.hosts_answered(),
        trusted_proxies=settings.trusted_proxies,
    )
    web_security.add_docs(app)
    app.state.scheduler = scheduler
    app.state.readiness = None if scheduler is None else Readiness(scheduler.engine)
    app.state.settings = settings
    # The try-it chats make their LLM client on the first chat; the lifespan closes them.
    app.state.tryit_chats = WebChats(llm=llm_config(settings))
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if not key:
        key = secrets.token_urlsafe(24)
        log.warning("FRONTDESK_API_KEY is not set; generated a key for this run only")
    app.state.api_key = key
    app.state.call_observer = metrics.CallMetrics()
    http_errors.install(app)

    @app.exception_handler(calendar_web.LinkFailed)
    async def _link_failed(request: Request, exc: calendar_web.LinkFailed) -> Response:
        return calendar_web.failed(request, exc, http_errors.status_for(exc.error))

    app.include_router(api.router)
    app.include_router(staff_api.router)
    app.include_router(voice.router)
    app.include_router(messaging.router)
    app.include_router(web.router)
    app.include_router(calendar_web.router)
    app.state.calendar_guard = calendar_web.CalendarGuard(
        authorize=_authorize_linking, verify_form=_verify_linking_form
    )
    web.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        readiness: Readiness | None = request.app.state.readiness
        problem = "starting up" if readiness is None else await readiness.problem()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(api.require_api_key)])
    async def metrics_page() -> Response:
        return Response(metrics.scrape(), media_type=metrics.CONTENT_TYPE_LATEST)

    return app
