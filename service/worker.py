"""`rsir worker`: the inference worker as its own process (the GPU process of a deployment).

It loads the models and the index once, serves queries to the API over a small internal HTTP
API (`/internal/...`, on worker_host:worker_port), and claims jobs from the metadata DB. When
an API key is configured, the internal API requires it too (the API sends it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine

from rsir_common import __version__
from rsir_common.settings import Settings
from service.app import MULTIPART_SLACK_BYTES, add_error_handlers
from service.backend import INTERNAL_PREFIX, classify_to_json, search_to_json
from service.deps import RowId
from service.errors import PayloadTooLargeError, parse_area, parse_feedback
from service.inference import InferenceCore
from service.jobs import JobStore
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.runtime import WorkerRuntime, current_db_problem
from service.search_engine import SearchOptions
from service.security import check_api_key, check_internal_exposure, validate_api_key_setting
from service.state import prepare_db
from service.uploads import check_and_decode

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    settings: Settings
    engine: Engine
    metrics: Metrics
    runtime: WorkerRuntime
    db_problem: str | None

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics, poll_seconds: float) -> WorkerState:
        engine, problem = prepare_db(settings)
        jobs = JobStore(engine, settings.job_lease_seconds, settings.job_max_attempts)
        runtime = WorkerRuntime(
            settings, engine, metrics, jobs, poll_seconds=poll_seconds, db_problem=problem
        )
        runtime.start()
        return cls(settings, engine, metrics, runtime, problem)

    def close(self) -> None:
        self.runtime.stop()
        self.engine.dispose()


def _state(request: Request) -> WorkerState:
    return request.app.state.worker


StateDep = Annotated[WorkerState, Depends(_state)]


def _core(state: StateDep) -> InferenceCore:
    return state.runtime.core


CoreDep = Annotated[InferenceCore, Depends(_core)]


def _internal_key(state: StateDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """With a configured key, only callers holding it (the API) may use the internal API."""
    if state.settings.api_key is not None:
        check_api_key(state.settings.api_key, x_api_key)


internal = APIRouter(prefix=INTERNAL_PREFIX, dependencies=[Depends(_internal_key)])


async def _image(request: Request, state: StateDep) -> Image.Image:
    """The raw body as a checked image (the API checked it too; a job row or caller may lie)."""
    limit = state.settings.max_upload_bytes
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise PayloadTooLargeError(f"upload is larger than the limit of {limit} bytes")
    return await anyio.to_thread.run_sync(check_and_decode, bytes(data), state.settings.max_pixels)


@internal.post("/search")
async def search(
    request: Request,
    state: StateDep,
    core: CoreDep,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    label: str | None = None,
    bbox: str | None = None,
    relevant: str | None = None,
    not_relevant: str | None = None,
) -> dict[str, Any]:
    area = parse_area(bbox)
    options = SearchOptions(k, label, parse_feedback(relevant, not_relevant))
    image = await _image(request, state)
    return search_to_json(await core.retrieval.search(image, options, area))


@internal.get("/images/{image_id}/similar")
async def similar(
    core: CoreDep,
    image_id: RowId,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    label: str | None = None,
    relevant: str | None = None,
    not_relevant: str | None = None,
) -> dict[str, Any]:
    options = SearchOptions(k, label, parse_feedback(relevant, not_relevant))
    return search_to_json(await core.retrieval.similar(image_id, options))


@internal.delete("/images/{image_id}")
def remove_image(core: CoreDep, image_id: RowId) -> dict[str, int]:
    return {"removed": core.retrieval.remove_images([image_id])}


@internal.post("/explain", response_class=Response)
async def explain(request: Request, state: StateDep, core: CoreDep) -> Response:
    image = await _image(request, state)
    return Response(await core.retrieval.explain(image), media_type="image/png")


@internal.post("/classify")
async def classify(
    request: Request,
    state: StateDep,
    core: CoreDep,
    model: str | None = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
    explain: bool = False,
) -> dict[str, Any]:
    image = await _image(request, state)
    return classify_to_json(await core.classifiers.classify(image, model, top_k, explain))


@internal.get("/models")
def models(core: CoreDep) -> dict[str, Any]:
    return {"models": [m.to_dict() for m in core.models()]}


@internal.get("/status")
def status(state: StateDep, core: CoreDep) -> dict[str, Any]:
    out = core.status()
    problem = current_db_problem(state.engine)
    if problem:
        out["problems"] = [*out["problems"], problem]
        out["ready"] = False
    runner = state.runtime.runner
    out["worker_id"] = runner.worker_id if runner else None
    out["current_job"] = runner.current if runner else None
    return out


ops = APIRouter()


@ops.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@ops.get("/ready")
def ready(state: StateDep, core: CoreDep) -> JSONResponse:
    out = status(state, core)
    if not out["ready"]:
        return JSONResponse({"detail": "not ready: " + "; ".join(out["problems"]), **out}, 503)
    return JSONResponse(out)


@ops.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_worker_app(settings: Settings | None = None, *, poll_seconds: float = 1.0) -> FastAPI:
    """The worker process's app: internal query API + job loop, loaded in the lifespan."""
    settings = settings or Settings()
    validate_api_key_setting(settings.api_key)
    check_internal_exposure(settings.api_key, settings.worker_host)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await anyio.to_thread.run_sync(WorkerState.build, settings, metrics, poll_seconds)
        app.state.worker = state
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.close)

    app = FastAPI(title="rsir worker", version=__version__, lifespan=lifespan)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + MULTIPART_SLACK_BYTES
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    add_error_handlers(app)
    app.include_router(internal)
    app.include_router(ops)
    return app
