"""The FastAPI application factory. Nothing is loaded at import: the lifespan loads it once."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rsir_common import __version__
from rsir_common.settings import Settings
from service.errors import ServiceError
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.openapi import install_error_responses
from service.routes import classify, images, jobs, ops, scenes, search
from service.security import validate_api_key_setting
from service.state import AppState

log = logging.getLogger(__name__)

# Room for the multipart envelope and the small form fields around the image itself.
MULTIPART_SLACK_BYTES = 64 * 1024


def add_error_handlers(app: FastAPI) -> None:
    """Every ServiceError becomes `{"detail": ...}` with its status."""

    async def service_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    app.add_exception_handler(ServiceError, service_error)


def create_app(
    settings: Settings | None = None, *, run_jobs: bool = True, poll_seconds: float = 1.0
) -> FastAPI:
    """The public API. In-process worker unless `settings.worker_url` names a `rsir worker`.

    `run_jobs=False` leaves queued jobs to other workers (an API-only replica).
    """
    settings = settings or Settings()
    validate_api_key_setting(settings.api_key)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await anyio.to_thread.run_sync(
            AppState.build, settings, metrics, run_jobs, poll_seconds
        )
        app.state.rsir = state
        try:
            yield
        finally:
            await state.backend.aclose()
            await anyio.to_thread.run_sync(state.close)

    app = FastAPI(
        title="rsir",
        version=__version__,
        description="Content-based remote-sensing image retrieval and scene classification.",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + MULTIPART_SLACK_BYTES
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    add_error_handlers(app)
    install_error_responses(app)
    for module in (ops, search, images, classify, jobs, scenes):
        app.include_router(module.router)
    if importlib.util.find_spec("service.web") is not None:  # the web page, when it is there
        from service.web import router as web_router

        app.include_router(web_router)
    else:
        log.info("service.web is not installed: API only, no web page")
    return app
