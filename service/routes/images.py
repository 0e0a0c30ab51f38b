"""Indexed images: metadata, a thumbnail, and the original file, read from its source."""

from __future__ import annotations

import io
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response, status
from PIL import Image

from indexer.db import ImageRow, make_sessionmaker
from indexer.search import hit_from_row
from model.imageio import ImageDecodeError, decode_image
from service.deps import ApiKeyDep, BackendDep, RowId, SettingsDep, StateDep
from service.errors import NotFoundError, ServiceError
from service.schemas import ImageOut
from service.security import public_path
from service.uploads import sniff_image_type

router = APIRouter(tags=["images"])

CACHE_HEADERS = {"Cache-Control": "private, max-age=3600"}


def _row(state: StateDep, image_id: int) -> ImageRow:
    with make_sessionmaker(state.engine)() as session:
        row = session.get(ImageRow, image_id)
    if row is None:
        raise NotFoundError(f"no image with id {image_id}")
    return row


def _bytes(state: StateDep, row: ImageRow) -> bytes:
    try:
        return state.sources.read(row.source, row.path)
    except (OSError, KeyError, ValueError) as exc:
        raise ServiceError(
            f"image {row.id} is indexed but its file cannot be read "
            f"({row.source}:{row.path}): {exc}",
            410,
        ) from None


ImageId = RowId


def content_disposition(path: str) -> str:
    """`inline` with the file's name: an ASCII fallback plus the exact name (RFC 6266)."""
    name = path.rsplit("/", 1)[-1]
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/images/{image_id}", response_model=ImageOut)
def image_info(request: Request, state: StateDep, image_id: ImageId) -> ImageOut:
    """What the DB records about an indexed image."""
    row = _row(state, image_id)
    return ImageOut(
        id=row.id,
        source=public_path(row.source, state.settings.data_root),
        path=row.path,
        label=row.label,
        width=row.width,
        height=row.height,
        content_hash=row.content_hash,
        model_fingerprint=row.model_fingerprint,
        index_version=row.index_version,
        created_at=row.created_at,
        thumbnail_url=request.url_for("image_thumbnail", image_id=row.id).path,
        file_url=request.url_for("image_file", image_id=row.id).path,
        similar_url=request.url_for("similar", image_id=row.id).path,
        **place_fields(row),
    )


def place_fields(row: ImageRow) -> dict[str, Any]:
    """A scene tile's place (scene, window, CRS, footprint, bbox), as its search hits give it."""
    hit = hit_from_row(row, 0.0)
    return {"scene_id": hit.scene_id, "window": hit.window, "crs": hit.crs,
            "footprint": hit.footprint, "bbox": hit.bbox}  # fmt: skip


@router.get(
    "/images/{image_id}/thumbnail",
    name="image_thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def image_thumbnail(
    state: StateDep,
    settings: SettingsDep,
    image_id: ImageId,
    size: Annotated[int, Query(ge=16, le=512)] = 128,
) -> Response:
    """A JPEG at most `size` pixels on its longer side."""
    row = _row(state, image_id)
    try:
        image = decode_image(_bytes(state, row), settings.max_pixels)
    except ImageDecodeError as exc:
        raise ServiceError(f"image {image_id} cannot be decoded: {exc}", 422) from None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Response(buffer.getvalue(), media_type="image/jpeg", headers=CACHE_HEADERS)


@router.get(
    "/images/{image_id}/file",
    name="image_file",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def image_file(state: StateDep, image_id: ImageId) -> Response:
    """The original bytes, with the type their content shows."""
    row = _row(state, image_id)
    data = _bytes(state, row)
    media_type = sniff_image_type(data) or "application/octet-stream"
    headers = {**CACHE_HEADERS, "Content-Disposition": content_disposition(row.path)}
    return Response(data, media_type=media_type, headers=headers)


@router.delete(
    "/images/{image_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[ApiKeyDep]
)
async def delete_image(backend: BackendDep, image_id: ImageId) -> Response:
    """Remove an image from the index and the DB together (its file is left alone)."""
    await backend.remove_image(image_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
