"""Request dependencies as `Annotated` aliases, so routes stay thin and tests can override them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, File, Header, Path, Request, UploadFile
from PIL import Image

from indexer.db import MAX_ROW_ID
from rsir_common.settings import Settings
from service.backend import Backend
from service.jobs import JobStore
from service.security import check_api_key
from service.state import AppState
from service.uploads import check_and_decode, read_upload


def get_state(request: Request) -> AppState:
    """The state loaded by the lifespan."""
    return request.app.state.rsir


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_backend(state: StateDep) -> Backend:
    return state.backend


def get_jobs(state: StateDep) -> JobStore:
    return state.jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
BackendDep = Annotated[Backend, Depends(get_backend)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]


def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(description="Key for write endpoints.")] = None,
) -> None:
    """Write endpoints: 401 without the key, 403 with a wrong one (or none configured)."""
    check_api_key(settings.api_key, x_api_key)


ApiKeyDep = Depends(require_api_key)

# A path id (image or job): bounded to what the DB column holds, so a larger one is a 422,
# never an out-of-range error from the DB driver.
RowId = Annotated[int, Path(ge=0, le=MAX_ROW_ID, description="A row id.")]


@dataclass
class CheckedImage:
    """An upload that passed the byte cap, the sniffing and the pixel cap, and its decoding."""

    data: bytes
    image: Image.Image


async def checked_image(
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="The image (JPEG, PNG, TIFF, ...).")],
) -> CheckedImage:
    """Read and check the multipart `image` field (413, 415, 422 otherwise)."""
    data = await read_upload(image, settings.max_upload_bytes)
    decoded = await anyio.to_thread.run_sync(check_and_decode, data, settings.max_pixels)
    return CheckedImage(data, decoded)


ImageDep = Annotated[CheckedImage, Depends(checked_image)]


async def optional_checked_image(
    settings: SettingsDep,
    image: Annotated[
        UploadFile | None,
        File(description="The image (JPEG, PNG, TIFF, ...); optional for a query by place."),
    ] = None,
) -> CheckedImage | None:
    """Like `checked_image`, for routes that can also take their query from elsewhere."""
    if image is None:
        return None
    return await checked_image(settings, image)


OptionalImageDep = Annotated[CheckedImage | None, Depends(optional_checked_image)]
