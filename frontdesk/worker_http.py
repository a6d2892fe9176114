"""The `frontdesk worker` process's own small HTTP server: `/healthz`, `/readyz` and `/metrics`.

A job worker serves no calls, but its figures (job lag, job runs, webhook deliveries, calendar
requests) live in its process: in a container of its own no web worker's `/metrics` can see them.
`frontdesk worker --metrics-port N` serves them, behind the same API key as the web's `/metrics`.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from dashboard import api
from frontdesk import metrics
from frontdesk.readiness import Readiness


def worker_app(engine: Engine, api_key: str) -> FastAPI:
    """The worker's endpoints over its database `engine`; `/metrics` needs `api_key`."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.api_key = api_key
    readiness = Readiness(engine)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problem = await readiness.problem()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", dependencies=[Depends(api.require_api_key)])
    async def metrics_page() -> Response:
        return Response(metrics.scrape(), media_type=metrics.CONTENT_TYPE_LATEST)

    return app
