"""Queries from scenes: a GeoTIFF query shown to the model as its scene's tiles were, and
query by place (a pixel or lon/lat window of an indexed scene, no upload needed).

Why: a 16-bit or many-band query decoded on its own (first three bands, per-image min-max)
looks different from the indexed tiles of its scene, which were cut with chosen bands and the
scene's 2-98 % stretch; the scene's record in the DB says how to render it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from rasterio.io import DatasetReader, MemoryFile
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds
from sqlalchemy import Engine, select

from indexer.area import BBox
from indexer.db import SceneRow, make_sessionmaker
from indexer.scenes import (
    WGS84,
    SceneError,
    Stretch,
    UnknownSceneError,
    bands_to_rgb,
    gdal_env,
    is_georeferenced,
    open_scene,
    read_window,
    window_corners,
)
from model.imageio import ImageDecodeError, decode_image, is_tiff

WEB_MERCATOR = "EPSG:3857"
PLACE_MAX_SIDE = 1024  # a place query is read at most this many pixels wide (overviews)


def scene_bands(row: SceneRow) -> tuple[int, ...]:
    return tuple(int(b) for b in row.bands.split(","))


def scene_stretch(row: SceneRow) -> Stretch | None:
    return [(float(lo), float(hi)) for lo, hi in row.stretch] if row.stretch else None


def get_scene(engine: Engine, scene_id: int) -> SceneRow:
    """The scene's row, or SceneError."""
    with make_sessionmaker(engine)() as session:
        row = session.get(SceneRow, scene_id)
    if row is None:
        raise UnknownSceneError(f"no indexed scene with id {scene_id}")
    return row


def list_scenes(engine: Engine) -> list[SceneRow]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(SceneRow).order_by(SceneRow.id)))


# ---------------------------------------------------------------------------- GeoTIFF queries
def _matching_scene(engine: Engine, dataset: DatasetReader) -> SceneRow | None:
    """The indexed scene a GeoTIFF query belongs to: same band count and data type, and, when
    the query is geo-referenced, the largest overlap with it."""
    candidates = [
        s
        for s in list_scenes(engine)
        if s.band_count == dataset.count and s.dtype == dataset.dtypes[0]
    ]
    if not candidates:
        return None
    if not is_georeferenced(dataset):
        return candidates[0] if len({(s.bands, str(s.stretch)) for s in candidates}) == 1 else None
    west, south, east, north = transform_bounds(dataset.crs, WGS84, *dataset.bounds)

    def overlap(s: SceneRow) -> float:
        if s.min_lon is None:
            return 0.0
        width = min(east, s.max_lon) - max(west, s.min_lon)
        height = min(north, s.max_lat) - max(south, s.min_lat)
        return max(0.0, width) * max(0.0, height)

    best = max(candidates, key=overlap)
    return best if overlap(best) > 0 else None


def decode_query(data: bytes, engine: Engine, max_pixels: int) -> Image.Image:
    """Query bytes -> RGB; a GeoTIFF of an indexed scene gets that scene's bands and stretch."""
    if not is_tiff(data):
        return decode_image(data, max_pixels)
    try:
        with MemoryFile(data) as memory, open_scene(memory) as dataset:
            if dataset.width * dataset.height > max_pixels:
                raise ImageDecodeError(
                    f"image has {dataset.width * dataset.height} pixels, over the limit of "
                    f"{max_pixels}"
                )
            scene = _matching_scene(engine, dataset)
            if scene is None:
                return decode_image(data, max_pixels)
            whole = Window(0, 0, dataset.width, dataset.height)
            pixels, _ = read_window(
                dataset, whole, (dataset.height, dataset.width), scene_bands(scene),
                scene_stretch(scene),
            )  # fmt: skip
            return bands_to_rgb(pixels)
    except SceneError:
        return decode_image(data, max_pixels)


# ---------------------------------------------------------------------------- query by place
@dataclass(frozen=True)
class Place:
    """A region of an indexed scene rendered as the scene's tiles were."""

    scene_id: int
    window: Window
    image: Image.Image


def parse_window(text: str) -> Window:
    """'col,row,width,height' in scene pixels."""
    try:
        col, row, width, height = (int(v) for v in text.split(","))
    except ValueError:
        raise SceneError(f"window must be 4 integers col,row,width,height; got {text!r}") from None
    if width < 1 or height < 1 or col < 0 or row < 0:
        raise SceneError(f"window needs col, row >= 0 and width, height >= 1; got {text!r}")
    return Window(col, row, width, height)


def place_image(
    engine: Engine,
    scene_id: int,
    window: Window | None = None,
    area: BBox | None = None,
    max_side: int = PLACE_MAX_SIDE,
) -> Place:
    """The pixels of a scene window, or of a lon/lat box of the scene, as the index saw them."""
    if (window is None) == (area is None):
        raise SceneError("give either a pixel window or a lon/lat box of the scene")
    scene = get_scene(engine, scene_id)
    with open_scene(scene.source) as dataset:
        if area is not None:
            if not is_georeferenced(dataset):
                raise SceneError(f"scene {scene_id} has no CRS: give a pixel window")
            with gdal_env():
                bounds = transform_bounds(WGS84, dataset.crs, *area.as_list(), densify_pts=21)
            window = from_bounds(*bounds, transform=dataset.transform)
        assert window is not None
        scene_box = Window(0, 0, dataset.width, dataset.height)
        try:
            window = window.intersection(scene_box)
        except Exception:  # rasterio raises WindowError when they do not meet
            raise SceneError(f"the window lies outside scene {scene_id}") from None
        window = window.round_offsets().round_lengths()
        if window.width < 8 or window.height < 8:
            raise SceneError(f"the window inside scene {scene_id} is too small ({window})")
        scale = max(1.0, max(window.width, window.height) / max_side)
        shape = (max(1, round(window.height / scale)), max(1, round(window.width / scale)))
        pixels, _ = read_window(dataset, window, shape, scene_bands(scene), scene_stretch(scene))
    return Place(scene_id, window, bands_to_rgb(pixels))


def overview_extent(scene: SceneRow) -> tuple[tuple[float, float, float, float], list[float]]:
    """Where a scene's overview lies: its box in Web Mercator and that box in lon/lat
    (west, south, east, north). Computed from the DB record alone, without opening the file."""
    from affine import Affine

    transform = Affine(*scene.transform[:6])
    xs, ys = window_corners(transform, Window(0, 0, scene.width, scene.height))
    with gdal_env():
        mercator = transform_bounds(
            scene.crs, WEB_MERCATOR, min(xs), min(ys), max(xs), max(ys), densify_pts=21
        )
        lon_lat = transform_bounds(WEB_MERCATOR, WGS84, *mercator)
    return mercator, [float(v) for v in lon_lat]


def overview_png(engine: Engine, scene_id: int, max_side: int = 1024) -> bytes:
    """The scene warped to Web Mercator over `overview_extent`, nodata transparent (PNG), so
    a web map places it exactly; read from the overviews, at most `max_side` pixels wide."""
    import io

    from rasterio.transform import from_bounds as transform_from_bounds
    from rasterio.warp import Resampling, reproject

    scene = get_scene(engine, scene_id)
    if scene.crs is None:
        raise SceneError(f"scene {scene_id} has no CRS: it has no place on a map")
    mercator, _ = overview_extent(scene)
    with open_scene(scene.source) as dataset, gdal_env():
        scale = max(1.0, max(dataset.width, dataset.height) / max_side)
        shape = (max(1, round(dataset.height / scale)), max(1, round(dataset.width / scale)))
        whole = Window(0, 0, dataset.width, dataset.height)
        pixels, invalid = read_window(
            dataset, whole, shape, scene_bands(scene), scene_stretch(scene)
        )
        src_transform = dataset.transform @ dataset.transform.scale(
            dataset.width / shape[1], dataset.height / shape[0]
        )
        rgb = np.repeat(pixels, 3, 0) if len(pixels) == 1 else pixels
        alpha = np.where(invalid, 0, 255).astype(np.uint8)[None]
        west, south, east, north = mercator
        ratio = (east - west) / max(north - south, 1e-9)
        width, height = (
            (max_side, max(1, round(max_side / ratio)))
            if ratio >= 1
            else (max(1, round(max_side * ratio)), max_side)
        )
        out = np.zeros((4, height, width), dtype=np.uint8)
        reproject(
            np.concatenate([rgb, alpha]), out, src_transform=src_transform, src_crs=dataset.crs,
            dst_transform=transform_from_bounds(west, south, east, north, width, height),
            dst_crs=WEB_MERCATOR, resampling=Resampling.nearest,
        )  # fmt: skip
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.moveaxis(out, 0, -1)), mode="RGBA").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()
