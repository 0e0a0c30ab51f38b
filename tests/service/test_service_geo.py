"""Geo search over HTTP: hits with footprints, GeoJSON, the bbox filter, query by place, scenes.

A real index of the two real GeoTIFF scenes (../shared/data/geotiff) plus real UCM images
(plain images: no place), served by the real app over the ASGI transport.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.windows import Window
from shapely.geometry import shape
from sqlalchemy import select

from indexer.db import ImageRow, make_engine, make_sessionmaker
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from tests.helpers import running_app

if TYPE_CHECKING:
    from conftest import World

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GEOTIFF = Path(os.environ.get("RSIR_TEST_DATA", REPO.parent / "shared" / "data")) / "geotiff"


def geotiff_dir(world: World) -> Path:
    """The real GeoTIFFs (read in place: they are only indexed, never served as a data root)."""
    if not (GEOTIFF / "cogeo.tif").is_file():
        pytest.skip(f"the real GeoTIFFs are not at {GEOTIFF}")
    return GEOTIFF


@pytest.fixture(scope="module")
def geo_world(world: World) -> tuple[World, Path]:
    """An index of the COG, the Landsat subset and the plain UCM images of the world."""
    index_dir = world.root / "geo-index"
    if not index_dir.exists():
        scenes = geotiff_dir(world)
        for source in (scenes / "cogeo.tif", scenes / "RGB.byte.tif", world.collection):
            summary = index_source(
                source,
                world.checkpoint,
                IndexOptions(index_dir=index_dir, batch_size=16, num_workers=0, device="cpu"),
            )
            assert summary.corrupt == 0, summary
    return world, index_dir


@pytest.fixture(scope="module")
async def geo_client(
    geo_world: tuple[World, Path], anyio_backend: str
) -> AsyncIterator[httpx.AsyncClient]:
    world, index_dir = geo_world
    async with running_app(world.settings(index_dir=index_dir), poll_seconds=0.2) as http:
        yield http


def tile_png(scene: Path, window: Window) -> bytes:
    with rasterio.open(scene) as src:
        pixels = src.read(window=window)
    buffer = io.BytesIO()
    Image.fromarray(np.moveaxis(pixels, 0, -1)).save(buffer, format="PNG")
    return buffer.getvalue()


def db_rows(index_dir: Path) -> list[ImageRow]:
    engine = make_engine(f"sqlite:///{index_dir / 'metadata.db'}")
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(ImageRow)))
    engine.dispose()
    return rows


def upload(data: bytes, name: str = "query.png", mime: str = "image/png") -> dict[str, object]:
    return {"image": (name, data, mime)}


async def test_hits_carry_their_footprint_and_plain_images_none(
    geo_client: httpx.AsyncClient, geo_world: tuple[World, Path]
) -> None:
    world, index_dir = geo_world
    cog = geotiff_dir(world) / "cogeo.tif"
    response = await geo_client.post(
        "/search", files=upload(tile_png(cog, Window(256, 512, 256, 256))), data={"k": 50}
    )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    first = hits[0]
    assert first["path"] == "tile_512_256_256.png" and first["score"] > 0.999
    row = next(r for r in db_rows(index_dir) if r.id == first["id"])
    assert first["footprint"] == row.footprint and first["crs"] == "EPSG:3857"
    assert first["window"] == [256, 512, 256, 256] and first["scene_id"] == row.scene_id
    assert first["bbox"] == [row.min_lon, row.min_lat, row.max_lon, row.max_lat]
    info = (await geo_client.get(f"/images/{first['id']}")).json()
    assert info["footprint"] == row.footprint and info["window"] == first["window"]
    thumb = await geo_client.get(first["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    plain = [h for h in hits if h["scene_id"] is None]
    assert plain and all(h["footprint"] is None and h["bbox"] is None for h in plain)


async def test_geojson_feature_collection_validates(
    geo_client: httpx.AsyncClient, geo_world: tuple[World, Path]
) -> None:
    world, index_dir = geo_world
    cog = geotiff_dir(world) / "cogeo.tif"
    query = tile_png(cog, Window(0, 0, 256, 256))
    by_form = await geo_client.post(
        "/search", files=upload(query), data={"k": 40, "format": "geojson"}
    )
    by_query = await geo_client.post("/search?format=geojson", files=upload(query), data={"k": 40})
    for response in (by_form, by_query):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/geo+json")
    collection = json.loads(by_form.content)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 40
    rows = {r.id: r for r in db_rows(index_dir)}
    boxes = []
    for rank, feature in enumerate(collection["features"], 1):
        assert feature["type"] == "Feature" and feature["properties"]["rank"] == rank
        assert {"id", "score", "label", "path", "thumbnail_url", "window", "crs"} <= set(
            feature["properties"]
        )
        row = rows[feature["id"]]
        if row.footprint is None:
            assert feature["geometry"] is None and "bbox" not in feature
            continue
        geometry = shape(feature["geometry"])
        assert geometry.geom_type == "Polygon" and geometry.is_valid and geometry.area > 0
        assert geometry.exterior.is_ccw  # RFC 7946 winding
        assert geometry.equals(shape(row.footprint))
        assert feature["bbox"] == pytest.approx(list(geometry.bounds))
        boxes.append(geometry.bounds)
    assert collection["bbox"] == pytest.approx(
        [min(b[0] for b in boxes), min(b[1] for b in boxes),
         max(b[2] for b in boxes), max(b[3] for b in boxes)]
    )  # fmt: skip
    # The same search as JSON lists the same hits in the same order.
    as_json = (await geo_client.post("/search", files=upload(query), data={"k": 40})).json()
    assert [h["id"] for h in as_json["hits"]] == [f["id"] for f in collection["features"]]


async def test_bbox_filter_returns_exactly_the_tiles_meeting_the_area(
    geo_client: httpx.AsyncClient, geo_world: tuple[World, Path]
) -> None:
    world, index_dir = geo_world
    landsat = geotiff_dir(world) / "RGB.byte.tif"
    rows = db_rows(index_dir)
    query = tile_png(landsat, Window(256, 256, 256, 256))
    for area in ([-78.2, 24.0, -77.4, 24.6], [-77.0, 23.0, -76.0, 24.2], [10.0, 10.0, 11.0, 11.0]):
        box = shapely.box(*area)
        expected = {r.id for r in rows if r.footprint and shape(r.footprint).intersects(box)}
        response = await geo_client.post(
            "/search", files=upload(query), data={"k": 1000, "bbox": ",".join(map(str, area))}
        )
        assert response.status_code == 200, response.text
        assert {h["id"] for h in response.json()["hits"]} == expected, area
    bad = await geo_client.post("/search", files=upload(query), data={"bbox": "1,2,3"})
    assert bad.status_code == 422 and "bbox" in bad.json()["detail"]
    upside_down = await geo_client.post("/search", files=upload(query), data={"bbox": "5,5,4,6"})
    assert upside_down.status_code == 422


async def test_query_by_place_pixel_or_lonlat_window(
    geo_client: httpx.AsyncClient, geo_world: tuple[World, Path]
) -> None:
    _, index_dir = geo_world
    rows = db_rows(index_dir)
    target = next(r for r in rows if r.path == "tile_256_512_256.png" and r.crs == "EPSG:3857")
    by_pixels = await geo_client.get(
        "/search", params={"scene_id": target.scene_id, "window": "512,256,256,256", "k": 3}
    )
    assert by_pixels.status_code == 200, by_pixels.text
    assert by_pixels.json()["hits"][0]["id"] == target.id
    assert by_pixels.json()["hits"][0]["score"] > 0.999
    as_geojson = await geo_client.get(
        "/search",
        params={"scene_id": target.scene_id, "window": "512,256,256,256", "format": "geojson"},
    )
    assert as_geojson.headers["content-type"].startswith("application/geo+json")
    assert as_geojson.json()["features"][0]["geometry"] == target.footprint
    # The tile's own lon/lat box, shrunk a little inside it: the same place.
    west, south, east, north = target.min_lon, target.min_lat, target.max_lon, target.max_lat
    assert west is not None and south is not None and east is not None and north is not None
    dx, dy = (east - west) * 0.01, (north - south) * 0.01
    inset = [west + dx, south + dy, east - dx, north - dy]
    by_place = await geo_client.post(
        "/search",
        data={"scene_id": target.scene_id, "place": ",".join(map(repr, inset)), "k": 3,
              "format": "geojson"},
    )  # fmt: skip
    assert by_place.status_code == 200, by_place.text
    assert by_place.json()["features"][0]["id"] == target.id
    unknown = await geo_client.get("/search", params={"scene_id": 999, "window": "0,0,64,64"})
    assert unknown.status_code == 404
    outside = await geo_client.get(
        "/search", params={"scene_id": target.scene_id, "window": "5000,5000,64,64"}
    )
    assert outside.status_code == 422 and "outside" in outside.json()["detail"]
    neither = await geo_client.post("/search", data={"k": 3})
    assert neither.status_code == 422


async def test_scenes_listed_with_a_web_mercator_overview(
    geo_client: httpx.AsyncClient,
) -> None:
    response = await geo_client.get("/scenes")
    assert response.status_code == 200, response.text
    scenes = {s["name"]: s for s in response.json()["scenes"]}
    assert set(scenes) == {"cogeo.tif", "RGB.byte.tif"}
    landsat = scenes["RGB.byte.tif"]
    assert landsat["crs"] == "EPSG:32618" and landsat["bands"] == [1, 2, 3]
    west, south, east, north = landsat["overview_bbox"]
    assert west <= landsat["bbox"][0] + 1e-9 and east >= landsat["bbox"][2] - 1e-9
    assert south <= landsat["bbox"][1] + 1e-9 and north >= landsat["bbox"][3] - 1e-9
    png = await geo_client.get(landsat["overview_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.mode == "RGBA" and max(image.size) == 1024
    alpha = np.asarray(image)[..., 3]
    assert (alpha == 0).any() and (alpha == 255).mean() > 0.3  # nodata corners transparent


async def test_index_job_cuts_a_scene_with_its_tiling_options(
    geo_client: httpx.AsyncClient, geo_world: tuple[World, Path]
) -> None:
    # Runs last in this module: it adds a scene (same file, other bands) to the shared index.
    import asyncio
    import shutil

    world, _ = geo_world
    target = world.data_root / "scenes" / "cogeo.tif"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(geotiff_dir(world) / "cogeo.tif", target)
    key = {"X-API-Key": world.api_key}
    bad = await geo_client.post(
        "/index-jobs", json={"source": "scenes/cogeo.tif", "tiles": {"bands": [1, 2]}}, headers=key
    )
    assert bad.status_code == 422 and "1 or 3 bands" in bad.text
    made = await geo_client.post(
        "/index-jobs",
        json={"source": "scenes/cogeo.tif",
              "tiles": {"tile_size": 128, "stride": 512, "resolution": 0.5971640348434448 * 4,
                        "bands": [3, 2, 1]}},
        headers=key,
    )  # fmt: skip
    assert made.status_code == 202, made.text
    url = made.json()["url"]
    for _ in range(300):
        job = (await geo_client.get(url)).json()
        if job["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.2)
    assert job["status"] == "done", job
    assert job["results"]["added"] == 4 and job["results"]["scene_id"] is not None
    scenes = (await geo_client.get("/scenes")).json()["scenes"]
    assert [3, 2, 1] in [s["bands"] for s in scenes]
