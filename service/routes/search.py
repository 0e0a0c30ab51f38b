"""Query by image or by place: POST/GET /search, GET /images/{id}/similar, POST /explain.

A query by place takes a window of an indexed scene (pixels or lon/lat) instead of an upload;
`bbox` keeps only tiles whose footprint meets an area; `format=geojson` answers a
FeatureCollection of the hits' footprints.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import JSONResponse

from indexer.area import BBox
from indexer.db import MAX_ROW_ID
from indexer.geojson import MEDIA_TYPE as GEOJSON
from indexer.geojson import feature_collection
from indexer.geoquery import decode_query, parse_window, place_image
from indexer.scenes import SceneError, UnknownSceneError, png_bytes
from model.imageio import is_tiff
from service.deps import BackendDep, CheckedImage, ImageDep, OptionalImageDep, RowId, StateDep
from service.errors import NotFoundError, ServiceError, parse_area, parse_feedback
from service.routes.scenes import scene_problem
from service.schemas import HitOut, SearchResponse
from service.search_engine import SearchOptions, SearchResult
from service.security import public_path

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
            source=public_path(hit.source, request.app.state.rsir.settings.data_root),
            path=hit.path,
            thumbnail_url=str(request.url_for("image_thumbnail", image_id=hit.id).path),
            file_url=str(request.url_for("image_file", image_id=hit.id).path),
            scene_id=hit.scene_id,
            window=hit.window,
            crs=hit.crs,
            footprint=hit.footprint,
            bbox=hit.bbox,
        )
        for hit in result.hits
    ]
    return SearchResponse(
        hits=hits,
        k=k,
        model_fingerprint=result.model_fingerprint,
        took_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


Format = Literal["json", "geojson"]
FORMAT_DOC = "json, or geojson: a GeoJSON FeatureCollection of the hits' footprints."
BBOX_DOC = "Only tiles whose footprint intersects west,south,east,north (WGS84 degrees)."
RELEVANT_DOC = (
    "Relevance feedback: comma-separated ids of hits marked relevant; the query moves toward "
    "their stored descriptors (Rocchio) before the search. An id not in the index is a 404."
)
NOT_RELEVANT_DOC = "Relevance feedback: comma-separated ids of hits marked not relevant."
GEO_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {GEOJSON: {}}, "description": "Hits (JSON, or GeoJSON with format=geojson)"}
}


def respond(
    request: Request, result: SearchResult, k: int, started: float, fmt: str | None
) -> SearchResponse | Response:
    """The hits as JSON, or as a GeoJSON FeatureCollection."""
    body = search_response(request, result, k, started)
    if fmt != "geojson":
        return body
    collection = feature_collection(
        (hit.model_dump() for hit in body.hits),
        k=k, model_fingerprint=body.model_fingerprint, took_ms=body.took_ms,
    )  # fmt: skip
    return JSONResponse(collection, media_type=GEOJSON)


async def scene_query(state: StateDep, upload: CheckedImage) -> CheckedImage:
    """A GeoTIFF upload rendered as its indexed scene's tiles were (bands, recorded stretch);
    re-encoded as PNG so that a separate worker sees the same pixels."""
    if not is_tiff(upload.data):
        return upload
    max_pixels = state.settings.max_pixels
    image = await anyio.to_thread.run_sync(decode_query, upload.data, state.engine, max_pixels)
    return CheckedImage(await anyio.to_thread.run_sync(png_bytes, image), image)


async def place_query(
    state: StateDep, scene_id: int, window: str | None, place: str | None
) -> CheckedImage:
    """The query of a query by place: a pixel or lon/lat window of an indexed scene."""
    try:
        pixels = parse_window(window) if window else None
        area = BBox.parse(place) if place else None
        found = await anyio.to_thread.run_sync(place_image, state.engine, scene_id, pixels, area)
    except UnknownSceneError as exc:
        raise NotFoundError(str(exc)) from None
    except (SceneError, ValueError) as exc:
        detail = await anyio.to_thread.run_sync(scene_problem, state, scene_id, str(exc))
        raise ServiceError(detail, 422) from None
    return CheckedImage(await anyio.to_thread.run_sync(png_bytes, found.image), found.image)


@router.post("/search", response_model=SearchResponse, responses=GEO_RESPONSES)
async def search(
    request: Request,
    state: StateDep,
    backend: BackendDep,
    upload: OptionalImageDep,
    k: Annotated[int, Form(ge=1, le=MAX_K, description="How many hits.")] = 10,
    label: Annotated[str | None, Form(description="Only hits of this class.")] = None,
    bbox: Annotated[str | None, Form(description=BBOX_DOC)] = None,
    scene_id: Annotated[
        int | None,
        Form(ge=0, le=MAX_ROW_ID, description="Query by place: an indexed scene (no image)."),
    ] = None,
    window: Annotated[
        str | None, Form(description="With scene_id: pixel window col,row,width,height.")
    ] = None,
    place: Annotated[
        str | None, Form(description="With scene_id: lon/lat window west,south,east,north.")
    ] = None,
    form_format: Annotated[Format | None, Form(alias="format", description=FORMAT_DOC)] = None,
    query_format: Annotated[Format | None, Query(alias="format", description=FORMAT_DOC)] = None,
    relevant: Annotated[str | None, Form(description=RELEVANT_DOC)] = None,
    not_relevant: Annotated[str | None, Form(description=NOT_RELEVANT_DOC)] = None,
) -> SearchResponse | Response:
    """Rank the indexed images by similarity to the uploaded image, or to a place of an
    indexed scene (`scene_id` with `window` or `place`, no upload); `relevant` and
    `not_relevant` refine the query with the hits a user marked."""
    started = time.perf_counter()
    area = parse_area(bbox)
    options = SearchOptions(k, label or None, parse_feedback(relevant, not_relevant))
    if (upload is None) == (scene_id is None):
        raise ServiceError("give either an image or a scene_id with a window or place", 422)
    if upload is not None:
        query = await scene_query(state, upload)
    else:
        assert scene_id is not None
        query = await place_query(state, scene_id, window, place)
    result = await backend.search(query.data, query.image, options, area)
    return respond(request, result, k, started, form_format or query_format)


@router.get("/search", response_model=SearchResponse, responses=GEO_RESPONSES)
async def search_place(
    request: Request,
    state: StateDep,
    backend: BackendDep,
    scene_id: Annotated[
        int, Query(ge=0, le=MAX_ROW_ID, description="The indexed scene to query from.")
    ],
    window: Annotated[str | None, Query(description="Pixel window col,row,width,height.")] = None,
    place: Annotated[str | None, Query(description="Lon/lat window west,south,east,north.")] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    label: Annotated[str | None, Query()] = None,
    bbox: Annotated[str | None, Query(description=BBOX_DOC)] = None,
    format: Annotated[Format, Query(description=FORMAT_DOC)] = "json",
    relevant: Annotated[str | None, Query(description=RELEVANT_DOC)] = None,
    not_relevant: Annotated[str | None, Query(description=NOT_RELEVANT_DOC)] = None,
) -> SearchResponse | Response:
    """Query by place: rank the indexed images by similarity to a window of an indexed scene."""
    started = time.perf_counter()
    area = parse_area(bbox)
    options = SearchOptions(k, label or None, parse_feedback(relevant, not_relevant))
    query = await place_query(state, scene_id, window, place)
    result = await backend.search(query.data, query.image, options, area)
    return respond(request, result, k, started, format)


@router.get("/images/{image_id}/similar", response_model=SearchResponse)
async def similar(
    request: Request,
    backend: BackendDep,
    image_id: RowId,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    label: Annotated[str | None, Query()] = None,
    relevant: Annotated[str | None, Query(description=RELEVANT_DOC)] = None,
    not_relevant: Annotated[str | None, Query(description=NOT_RELEVANT_DOC)] = None,
) -> SearchResponse:
    """Rank the indexed images by similarity to an indexed one (itself excluded), refined by
    the `relevant` / `not_relevant` hits a user marked."""
    started = time.perf_counter()
    options = SearchOptions(k, label or None, parse_feedback(relevant, not_relevant))
    result = await backend.similar(image_id, options)
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
