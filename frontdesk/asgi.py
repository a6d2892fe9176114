"""The application as an import string, for servers that start their own worker processes.

`frontdesk serve --workers N` runs uvicorn with `frontdesk.asgi:create` as a factory: each worker
process reads its settings from the environment (the parent puts the address and any generated
API key there), configures logging and builds its own app over the shared database. Any ASGI
server can run it the same way: `uvicorn --factory frontdesk.asgi:create --workers 4`.
"""

from __future__ import annotations

from fastapi import FastAPI

from frontdesk.app import create_app
from frontdesk.settings import Settings
from frontdesk.wiring import build_scheduler


def create() -> FastAPI:
    """One worker's app."""
    from frontdesk.cli import configure_logging

    settings = Settings()
    configure_logging(
        settings.log_level, verbose=False, serving=True, log_format=settings.log_format
    )
    settings = settings.bound_to(settings.host, settings.port)
    return create_app(settings, scheduler=build_scheduler(settings))
