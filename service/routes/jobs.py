"""Background jobs over HTTP: evaluations and index runs (create, list, read, delete).

Creating or deleting needs the API key. Reading a job first reaps expired leases, so a job
whose worker died shows as retried or failed even when no worker is left to notice.
"""

from __future__ import annotations

import logging
from pathlib import Path as FsPath
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response, status

from indexer.db import JobRow, JobStatus
from indexer.scenes import SceneError
from model.datasets import DatasetNotFoundError, resolve_layout_root
from service.deps import ApiKeyDep, BackendDep, JobsDep, RowId, SettingsDep, StateDep
from service.errors import NotFoundError, NotReadyError, ServiceError, UnknownModelError
from service.job_handlers import tile_options
from service.schemas import (
    EvaluationList,
    EvaluationOut,
    EvaluationRequest,
    IndexJobList,
    IndexJobOut,
    IndexJobRequest,
)
from service.security import public_path, public_text, resolve_inside

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

JobId = RowId
Limit = Annotated[int, Query(ge=1, le=1000)]


def _public_roots(request: Request) -> list[FsPath]:
    settings = request.app.state.rsir.settings
    return [FsPath(settings.data_root), FsPath(settings.index_dir)]


def _common(request: Request, row: JobRow, route: str) -> dict[str, Any]:
    """What every job shows; server paths relative to the data root, errors one line."""
    roots = _public_roots(request)
    results = row.results
    if results and isinstance(results.get("source"), str):
        results = {**results, "source": public_path(results["source"], roots[0])}
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "progress": round(row.progress, 2),
        "attempts": row.attempts,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "results": results,
        "error": public_text(row.error, roots),
        "url": request.url_for(route, job_id=row.id).path,
    }


def evaluation_out(request: Request, row: JobRow) -> EvaluationOut:
    params = row.params
    done = row.status == JobStatus.DONE
    return EvaluationOut(
        **_common(request, row, "get_evaluation"),
        dataset=params.get("dataset", ""),
        protocol=params.get("protocol", "split"),
        model=params.get("model"),
        root=public_path(params.get("root", ""), _public_roots(request)[0]),
        pr_curve_url=request.url_for("evaluation_pr_curve", job_id=row.id).path if done else None,
    )


def index_job_out(request: Request, row: JobRow) -> IndexJobOut:
    return IndexJobOut(
        **_common(request, row, "get_index_job"),
        source=public_path(row.params.get("source", ""), _public_roots(request)[0]),
        factory=row.params.get("factory"),
    )


async def _check_model(backend: BackendDep, name: str | None) -> str | None:
    """The embedder's name (default: the served one). An unknown name is refused while the
    worker can tell; if it cannot, the name is queued unchecked and the worker decides."""
    try:
        models = await backend.models()
    except NotReadyError:
        log.warning("worker unreachable: queuing evaluation with model %r unchecked", name)
        return name
    embedders = [m for m in models if m.kind == "embedder"]
    if name is None:
        return embedders[0].name if embedders else None
    if not any(name in (m.name, m.fingerprint) for m in embedders):
        raise UnknownModelError(f"unknown embedder {name!r}; loaded: {[m.name for m in embedders]}")
    return name


def _get(jobs: JobsDep, job_id: int, kind: str) -> JobRow:
    jobs.reap_expired()
    row = jobs.get(job_id, kind)
    if row is None:
        raise NotFoundError(f"no {kind} job with id {job_id}")
    return row


def _created(state: StateDep, response: Response, url: str) -> None:
    response.headers["Location"] = url
    if state.runtime is not None:
        state.runtime.wake()


# ---------------------------------------------------------------------- evaluations
@router.post(
    "/evaluations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvaluationOut,
    dependencies=[ApiKeyDep],
)
async def create_evaluation(
    request: Request,
    response: Response,
    body: EvaluationRequest,
    state: StateDep,
    settings: SettingsDep,
    backend: BackendDep,
    jobs: JobsDep,
) -> EvaluationOut:
    """Queue a retrieval evaluation (mAP, mAP@k, P@k, per-class AP, PR curve)."""
    root = resolve_inside(body.root or ".", settings.data_root)
    try:
        resolve_layout_root(body.dataset, root)
    except DatasetNotFoundError as exc:
        raise ServiceError(str(exc), 422) from None
    model = await _check_model(backend, body.model)
    params = {**body.model_dump(), "root": str(root), "model": model}
    row = await anyio.to_thread.run_sync(jobs.create, "evaluation", params)
    out = evaluation_out(request, row)
    _created(state, response, out.url)
    return out


@router.get("/evaluations", response_model=EvaluationList)
def list_evaluations(request: Request, jobs: JobsDep, limit: Limit = 100) -> EvaluationList:
    """Evaluations, newest first."""
    jobs.reap_expired()
    return EvaluationList(
        items=[evaluation_out(request, r) for r in jobs.list("evaluation", limit)]
    )


@router.get("/evaluations/{job_id}", response_model=EvaluationOut, name="get_evaluation")
def get_evaluation(request: Request, jobs: JobsDep, job_id: JobId) -> EvaluationOut:
    """Status, progress (%), and once done the results."""
    return evaluation_out(request, _get(jobs, job_id, "evaluation"))


@router.get(
    "/evaluations/{job_id}/pr-curve.png",
    name="evaluation_pr_curve",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def evaluation_pr_curve(jobs: JobsDep, job_id: JobId) -> Response:
    """The precision-recall curve of a finished evaluation."""
    row = _get(jobs, job_id, "evaluation")
    png = jobs.artifact(job_id, "evaluation")
    if png is None:
        raise NotFoundError(f"evaluation {job_id} has no PR curve (status {row.status})")
    return Response(png, media_type="image/png")


@router.delete(
    "/evaluations/{job_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[ApiKeyDep]
)
def delete_evaluation(jobs: JobsDep, job_id: JobId) -> Response:
    """Forget an evaluation that is not running."""
    _delete(jobs, job_id, "evaluation")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _delete(jobs: JobsDep, job_id: int, kind: str) -> None:
    row = _get(jobs, job_id, kind)
    if row.status == JobStatus.RUNNING or not jobs.delete(job_id, kind):
        raise ServiceError(f"{kind} job {job_id} is running; wait until it ends", 409)


# ---------------------------------------------------------------------- index jobs
@router.post(
    "/index-jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IndexJobOut,
    dependencies=[ApiKeyDep],
)
async def create_index_job(
    request: Request,
    response: Response,
    body: IndexJobRequest,
    state: StateDep,
    settings: SettingsDep,
    jobs: JobsDep,
) -> IndexJobOut:
    """Queue an indexing run of a folder or archive on the server (inside the data root)."""
    source: FsPath = resolve_inside(body.source, settings.data_root)
    if source == FsPath(settings.data_root).resolve():
        raise ServiceError("source is the whole data root: name a folder or archive inside it", 422)
    params: dict[str, object] = {"source": str(source), "factory": body.factory}
    if body.tiles is not None:
        try:  # the same checks the indexer makes, answered now rather than as a failed job
            tile_options(body.tiles.model_dump())
        except SceneError as exc:
            raise ServiceError(str(exc), 422) from None
        params["tiles"] = body.tiles.model_dump()
    row = await anyio.to_thread.run_sync(jobs.create, "index", params)
    out = index_job_out(request, row)
    _created(state, response, out.url)
    return out


@router.get("/index-jobs", response_model=IndexJobList)
def list_index_jobs(request: Request, jobs: JobsDep, limit: Limit = 100) -> IndexJobList:
    """Index jobs, newest first."""
    jobs.reap_expired()
    return IndexJobList(items=[index_job_out(request, r) for r in jobs.list("index", limit)])


@router.get("/index-jobs/{job_id}", response_model=IndexJobOut, name="get_index_job")
def get_index_job(request: Request, jobs: JobsDep, job_id: JobId) -> IndexJobOut:
    """Status, progress (%), and once done the run's summary."""
    return index_job_out(request, _get(jobs, job_id, "index"))


@router.delete(
    "/index-jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[ApiKeyDep]
)
def delete_index_job(jobs: JobsDep, job_id: JobId) -> Response:
    """Forget an index job that is not running (the images it indexed stay indexed)."""
    _delete(jobs, job_id, "index")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
