"""The one place domain errors become HTTP answers: JSON with a stable code and a clear reason.

`STATUS` is the one table from domain error to HTTP status. The JSON API answers through the
handlers `install` adds; the dashboard's pages (`status_for`) and calendar linking (whose
`LinkFailed` the application answers with `status_for`, see `frontdesk.app`) use the same table,
so one error has one status wherever it is met.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from booking import errors
from booking.idempotency import RequestInProgress

log = logging.getLogger(__name__)

STATUS: list[tuple[type[errors.BookingError], int]] = [
    (RequestInProgress, 409),
    (errors.AmbiguousBusiness, 400),
    (errors.NotFound, 404),
    (errors.InvalidRequest, 422),
    (errors.SlotUnavailable, 409),
    (errors.HoldExpired, 410),
    (errors.NotYourAppointment, 403),
    (errors.AppointmentNotActive, 409),
    (errors.CalendarUnavailable, 503),
    (errors.Busy, 503),
    (errors.NotConfigured, 503),  # e.g. no FRONTDESK_SECRET_KEY, no OAuth app: linking is off
]


def status_for(exc: errors.BookingError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def body_for(exc: errors.BookingError) -> dict[str, object]:
    return {"error": exc.code, "message": exc.message, "retryable": exc.retryable}


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.BookingError)
    async def _domain(request: Request, exc: errors.BookingError) -> JSONResponse:
        status = status_for(exc)
        log.info(
            "%s %s -> %s %s: %s", request.method, request.url.path, status, exc.code, exc.message
        )
        return JSONResponse(body_for(exc), status_code=status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        log.info("%s %s -> %s: %s", request.method, request.url.path, exc.status_code, exc.detail)
        return JSONResponse(
            {"error": f"http_{exc.status_code}", "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query")),
                "reason": e["msg"].removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        log.info("%s %s -> 422 invalid: %s", request.method, request.url.path, problems)
        text = "; ".join(
            f"{p['field']}: {p['reason']}" if p["field"] else p["reason"] for p in problems
        )
        return JSONResponse(
            {"error": "invalid_request", "message": text, "problems": problems},
            status_code=422,
        )
