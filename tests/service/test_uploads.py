"""Upload checks over HTTP: the sample cap answers 413 before decoding; orientation is applied."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from service.uploads import check_and_decode

if TYPE_CHECKING:
    from conftest import World

pytestmark = pytest.mark.anyio


def _band_bomb() -> bytes:
    """16 bands of 16 bits at 2,560 x 2,560: 6.6 Mpx pass the default 40 Mpx cap, but the
    samples are 210 MB decoded, over its 160 MB (4 bytes a pixel)."""
    buffer = io.BytesIO()
    tile = np.zeros((1, 256, 256), dtype=np.uint16)
    tifffile.imwrite(
        buffer,
        (tile for _ in range(16 * 10 * 10)),
        shape=(16, 2560, 2560),
        dtype=np.uint16,
        tile=(256, 256),
        photometric="minisblack",
        planarconfig="separate",
        compression="zlib",
    )
    return buffer.getvalue()


async def test_band_bomb_upload_is_413(client: httpx.AsyncClient, world: World) -> None:
    data = _band_bomb()
    assert len(data) < 1_000_000
    assert world.settings().max_pixels == 40_000_000
    for route in ("/search", "/explain"):
        response = await client.post(route, files={"image": ("bands.tif", data, "image/tiff")})
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert "2560 x 2560 x 16 bands x 2 bytes" in detail, detail


async def test_oriented_upload_is_decoded_upright(world: World) -> None:
    stored = Image.open(world.sample).convert("RGB").crop((0, 0, 256, 200))
    exif = Image.Exif()
    exif[274] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    assert check_and_decode(buffer.getvalue(), 1_000_000).size == (200, 256)
