"""Operations: /health (alive), /ready (models, index and DB loaded), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from indexer.db import JobStatus
from service.deps import StateDep
from service.errors import ServiceError
from service.runtime import current_db_problem

router = APIRouter(tags=["operations"])


@router.get("/health")
def health(state: StateDep) -> dict[str, Any]:
    """The process answers (200). `status` says truthfully whether it runs degraded: a DB or
    index being retried, a job loop waiting for the DB (details in /ready)."""
    runtime = state.runtime
    problems: list[str] = []
    if runtime is not None:
        if runtime.db_problem is not None:
            problems.append(f"job loop waiting for the DB: {runtime.db_problem}")
        problems.extend(runtime.core.problems if runtime.core.retrieval.store is None else [])
    return {"status": "degraded", "problems": problems} if problems else {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "Not ready; `detail` says what is missing."}},
)
async def ready(state: StateDep) -> JSONResponse:
    """200 when the embedder, the index and the DB are loaded; 503 with the reasons otherwise."""
    problems: list[str] = []
    db_problem = await anyio.to_thread.run_sync(current_db_problem, state.engine)
    if db_problem:
        problems.append(db_problem)
    components: dict[str, Any] = {"db": db_problem is None}
    try:
        worker = await state.backend.status()
        components["worker"] = worker
        if not worker.get("ready"):
            problems.extend(worker.get("problems") or ["model or index not loaded"])
    except ServiceError as exc:
        components["worker"] = None
        problems.append(exc.detail)
    if problems:
        return JSONResponse(
            {"detail": "not ready: " + "; ".join(problems), "components": components}, 503
        )
    return JSONResponse({"status": "ready", "components": components})


@router.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    """Prometheus text format: requests, latencies, batch sizes, queue depth, index size, jobs."""
    try:
        counts = state.jobs.counts()
    except Exception:  # the DB being down must not hide the other metrics
        counts = {}
    for status in JobStatus:
        state.metrics.jobs.labels(status).set(counts.get(status, 0))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
