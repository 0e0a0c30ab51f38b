"""Query by image: POST /search, GET /images/{id}/similar, and the heat-map POST /explain."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response

from service.deps import BackendDep, ImageDep, RowId
from service.inference import SearchResult
from service.schemas import HitOut, SearchResponse

router = APIRouter(tags=["search"])

MAX_K = 1000


def search_response(
    request: Request, result: SearchResult, k: int, started: float
) -> SearchResponse:
    """Hits with the URLs of their thumbnail and file."""
    hits = [
        HitOut(
            id=hit.id,
            score=hit.score,
            label=hit.label,
            source=hit.source,
            path=hit.path,
            thumbnail_url=str(request.url_for("image_thumbnail", image_id=hit.id).path),
            file_url=str(request.url_for("image_file", image_id=hit.id).path),
        )
        for hit in result.hits
    ]
    return SearchResponse(
        hits=hits,
        k=k,
        model_fingerprint=result.model_fingerprint,
        took_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


@router.post("/search", response_model=SearchResponse)
async def search(
    request: Request,
    backend: BackendDep,
    upload: ImageDep,
    k: Annotated[int, Form(ge=1, le=MAX_K, description="How many hits.")] = 10,
    label: Annotated[str | None, Form(description="Only hits of this class.")] = None,
) -> SearchResponse:
    """Rank the indexed images by similarity to the uploaded one."""
    started = time.perf_counter()
    result = await backend.search(upload.data, upload.image, k, label or None)
    return search_response(request, result, k, started)


@router.get("/images/{image_id}/similar", response_model=SearchResponse)
async def similar(
    request: Request,
    backend: BackendDep,
    image_id: RowId,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    label: Annotated[str | None, Query()] = None,
) -> SearchResponse:
    """Rank the indexed images by similarity to an indexed one (itself excluded)."""
    started = time.perf_counter()
    result = await backend.similar(image_id, k, label or None)
    return search_response(request, result, k, started)


@router.post(
    "/explain",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "Grad-CAM heat-map"}},
)
async def explain(backend: BackendDep, upload: ImageDep) -> Response:
    """Where the embedder looks: Grad-CAM of its feature map, over the query (PNG)."""
    png = await backend.explain(upload.data, upload.image)
    return Response(png, media_type="image/png")
