"""Indexed scenes: where they lie and their overview image, for the web page's map.

The overview is the scene itself (from its overviews), warped to Web Mercator, so a map with
no internet shows real pixels under the hits' footprints: no web tiles needed.
"""

from __future__ import annotations

from pathlib import Path, PurePath

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from indexer.db import SceneRow
from indexer.geoquery import get_scene, list_scenes, overview_extent, overview_png
from indexer.scenes import SceneError, UnknownSceneError
from service.deps import RowId, StateDep
from service.errors import NotFoundError, ServiceError
from service.schemas import SceneOut, ScenesResponse
from service.security import public_problem
from service.state import AppState

router = APIRouter(tags=["scenes"])


def scene_problem(state: AppState, scene_id: int, text: str) -> str:
    """`text` about a scene as public answers show it: the scene's file by its public path
    (service/security.py), one line. Blocking (a DB read): run it in a thread."""
    try:
        paths: list[Path | str] = [get_scene(state.engine, scene_id).source]
    except Exception:
        paths = []
    return public_problem(text, Path(state.settings.data_root), paths)


def scene_out(request: Request, scene: SceneRow) -> SceneOut:
    geo = scene.crs is not None
    bbox = [scene.min_lon, scene.min_lat, scene.max_lon, scene.max_lat]
    return SceneOut(
        id=scene.id,
        name=PurePath(scene.source).name,
        width=scene.width,
        height=scene.height,
        band_count=scene.band_count,
        dtype=scene.dtype,
        bands=[int(b) for b in scene.bands.split(",")],
        stretch=scene.stretch,
        crs=scene.crs,
        footprint=scene.footprint,
        bbox=[float(v) for v in bbox if v is not None] if geo else None,
        overview_url=(request.url_for("scene_overview", scene_id=scene.id).path if geo else None),
        overview_bbox=overview_extent(scene)[1] if geo else None,
    )


@router.get("/scenes", response_model=ScenesResponse)
async def scenes(request: Request, state: StateDep) -> ScenesResponse:
    """The indexed scenes with their footprint, bands, stretch and overview."""
    rows = await anyio.to_thread.run_sync(list_scenes, state.engine)
    return ScenesResponse(scenes=[scene_out(request, row) for row in rows])


@router.get(
    "/scenes/{scene_id}/overview",
    name="scene_overview",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "Web Mercator overview"}},
)
async def scene_overview(state: StateDep, scene_id: RowId) -> Response:
    """The scene in Web Mercator (PNG, nodata transparent), covering its `overview_bbox`."""
    try:
        png = await anyio.to_thread.run_sync(overview_png, state.engine, scene_id)
    except UnknownSceneError as exc:
        raise NotFoundError(str(exc)) from None
    except SceneError as exc:
        detail = await anyio.to_thread.run_sync(scene_problem, state, scene_id, str(exc))
        raise ServiceError(detail, 422) from None
    except OSError as exc:
        text = f"scene {scene_id} cannot be read: {exc}"
        detail = await anyio.to_thread.run_sync(scene_problem, state, scene_id, text)
        raise ServiceError(detail, 410) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
