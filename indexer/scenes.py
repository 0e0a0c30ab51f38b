"""Geo-referenced scenes (GeoTIFF, Cloud-Optimized GeoTIFF) cut into tiles with rasterio.

Why windows: a Sentinel-2 scene is 10980 x 10980 x 13 bands of 16-bit data (3 GB in memory);
each tile is read on its own (a COG by its blocks), through a small GDAL block cache, so the
memory of an indexing run does not depend on the scene's size.

A tile is named by its pixel window, so a tile's name alone says how to read it again:
`tile_<row>_<col>_<side>.png` (native resolution, the default bands), with `_<out>` when the
window is resampled to `out` pixels and `_b<4-3-2>` when bands were chosen. Data deeper than
8 bits is stretched per band between the scene's 2nd and 98th percentiles; that stretch is
recorded with the scene in the metadata DB so that queries are stretched the same way.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

TILE_PREFIX = "tile_"
WGS84 = "EPSG:4326"
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_SIDE = 1024  # the stretch is computed on a read at most this wide (overviews)
GDAL_CACHE_MB = 64  # GDAL's block cache per process; its default is 5 % of the machine's RAM
_TILE_NAME = re.compile(r"^tile_(\d+)_(\d+)_(\d+)(?:_(\d+))?(?:_b(\d+(?:-\d+)*))?\.png$")

Stretch = list[tuple[float, float]]


class SceneError(ValueError):
    """A scene or a window of it cannot be read as asked (bad bands, outside the scene...)."""


class UnknownSceneError(SceneError):
    """No indexed scene has this id."""


class TileSkipped(Exception):
    """A tile that is not worth indexing: `reason` is 'nodata' or 'blank'."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class TileOptions:
    """How a scene is cut: tile side (output pixels), stride, ground resolution, bands, skipping.

    `stride` is in source pixels between tile origins (default: the window side, no overlap);
    `resolution` is the ground size of an output pixel in the scene's CRS units (default:
    native), which sets the window side to tile_size * resolution / native resolution.
    """

    tile_size: int = 256
    stride: int | None = None
    resolution: float | None = None
    bands: tuple[int, ...] | None = None
    max_nodata: float = 0.5  # a tile with a larger nodata fraction is skipped
    min_std: float = 1.0  # a tile whose grey levels vary less than this is blank, skipped

    def __post_init__(self) -> None:
        if self.tile_size < 8:
            raise SceneError(f"tile size {self.tile_size} is too small (at least 8 pixels)")
        if self.stride is not None and self.stride < 1:
            raise SceneError(f"stride must be positive, got {self.stride}")
        if self.resolution is not None and not self.resolution > 0:
            raise SceneError(f"resolution must be positive, got {self.resolution}")
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise SceneError(f"choose 1 or 3 bands, got {list(self.bands)}")
        if not 0.0 <= self.max_nodata <= 1.0:
            raise SceneError(f"max_nodata is a fraction in [0, 1], got {self.max_nodata}")


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'4,3,2' -> (4, 3, 2); 1-based band numbers as GDAL counts them."""
    if text is None or not text.strip():
        return None
    try:
        bands = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SceneError(
            f"bands must be comma-separated numbers like 4,3,2, got {text!r}"
        ) from None
    if any(b < 1 for b in bands):
        raise SceneError(f"band numbers start at 1, got {text!r}")
    return bands


@dataclass(frozen=True)
class TileSpec:
    """One tile: its square source window, output side and explicit bands (None: default)."""

    row: int
    col: int
    side: int
    out: int
    bands: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        """The entry name stored in the DB (see the module docstring)."""
        name = f"{TILE_PREFIX}{self.row}_{self.col}_{self.side}"
        if self.out != self.side:
            name += f"_{self.out}"
        if self.bands is not None:
            name += "_b" + "-".join(str(b) for b in self.bands)
        return name + ".png"

    @property
    def window(self) -> Window:
        return Window(self.col, self.row, self.side, self.side)

    @classmethod
    def parse(cls, name: str) -> TileSpec:
        match = _TILE_NAME.match(name)
        if match is None:
            raise SceneError(f"{name!r} is not a tile name (tile_<row>_<col>_<side>[...].png)")
        row, col, side, out, bands = match.groups()
        band_tuple = tuple(int(b) for b in bands.split("-")) if bands else None
        return cls(int(row), int(col), int(side), int(out or side), band_tuple)


def open_scene(path: Path | str | MemoryFile) -> DatasetReader:
    """Open a scene for reading, quiet about files without geo-referencing (plain TIFFs)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            if isinstance(path, MemoryFile):
                return path.open()
            return rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise SceneError(f"cannot open scene {path}: {exc}") from None


def gdal_env() -> rasterio.Env:
    """The GDAL settings of every scene read: a small block cache (bounded memory)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")


def default_bands(count: int) -> tuple[int, ...]:
    """RGB from the first three bands, or the only band as grey."""
    return (1, 2, 3) if count >= 3 else (1,)


def resolve_bands(dataset: DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The bands to read, checked against the scene."""
    chosen = tuple(bands) if bands else default_bands(dataset.count)
    if len(chosen) not in (1, 3):
        raise SceneError(f"choose 1 or 3 bands, got {list(chosen)}")
    wrong = [b for b in chosen if not 1 <= b <= dataset.count]
    if wrong:
        raise SceneError(f"bands {wrong} do not exist: the scene has {dataset.count} bands")
    return chosen


def crs_string(crs: CRS | None) -> str | None:
    """'EPSG:<code>' when the CRS has one, else its WKT; None for a scene without a CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def is_georeferenced(dataset: DatasetReader) -> bool:
    return dataset.crs is not None and not dataset.transform.is_identity


# ---------------------------------------------------------------------------- stretch
def compute_stretch(dataset: DatasetReader, bands: Sequence[int]) -> Stretch | None:
    """Per-band 2-98 % percentiles of the valid pixels, from a decimated read (overviews).

    None for 8-bit data, which is shown as it is.
    """
    if all(dataset.dtypes[b - 1] == "uint8" for b in bands):
        return None
    scale = max(1.0, max(dataset.width, dataset.height) / STRETCH_SAMPLE_SIDE)
    shape = (
        len(bands),
        max(1, round(dataset.height / scale)),
        max(1, round(dataset.width / scale)),
    )
    with gdal_env():
        data = dataset.read(
            list(bands), out_shape=shape, masked=True, resampling=Resampling.nearest
        )
    stretch: Stretch = []
    for band in data:
        valid = np.ma.compressed(band).astype(np.float64)
        valid = valid[np.isfinite(valid)]
        if valid.size == 0:
            stretch.append((0.0, 1.0))
            continue
        low, high = np.percentile(valid, STRETCH_PERCENTILES)
        stretch.append((float(low), float(high) if high > low else float(low) + 1.0))
    return stretch


def to_uint8(data: np.ndarray, stretch: Stretch | None) -> np.ndarray:
    """B x H x W values -> B x H x W uint8 with the scene's stretch (8-bit data unchanged)."""
    if stretch is None:
        if data.dtype == np.uint8:
            return data
        return np.clip(data, 0, 255).astype(np.uint8)
    out = np.empty(data.shape, dtype=np.uint8)
    for i, (low, high) in enumerate(stretch):
        band = (np.nan_to_num(data[i].astype(np.float64), nan=low) - low) / (high - low)
        out[i] = np.clip(band * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def bands_to_rgb(data: np.ndarray) -> Image.Image:
    """1 or 3 uint8 bands (B x H x W) -> an RGB image."""
    rgb = np.repeat(data, 3, axis=0) if data.shape[0] == 1 else data
    return Image.fromarray(np.ascontiguousarray(np.moveaxis(rgb, 0, -1)), mode="RGB")


# ---------------------------------------------------------------------------- tiles
def _starts(length: int, side: int, stride: int) -> list[int]:
    """Window origins along one axis, with a last window flush with the edge (full coverage)."""
    if length < side:
        return []
    starts = list(range(0, length - side + 1, stride))
    if starts[-1] + side < length:
        starts.append(length - side)
    return starts


def window_side(dataset: DatasetReader, options: TileOptions) -> int:
    """Source pixels per tile side: the tile size, scaled by the requested ground resolution."""
    if options.resolution is None:
        return options.tile_size
    native = abs(dataset.transform.a)
    if not is_georeferenced(dataset) or native <= 0:
        raise SceneError("a resolution needs a geo-referenced scene")
    return max(1, round(options.tile_size * options.resolution / native))


def tile_specs(dataset: DatasetReader, options: TileOptions) -> Iterator[TileSpec]:
    """Every tile of the scene, row by row (the order a COG's blocks are laid out)."""
    side = window_side(dataset, options)
    stride = options.stride or side
    if options.bands is not None:
        resolve_bands(dataset, options.bands)
    for row in _starts(dataset.height, side, stride):
        for col in _starts(dataset.width, side, stride):
            yield TileSpec(row, col, side, options.tile_size, options.bands)


def scene_tile_names(scene: Path, options: TileOptions | None = None) -> list[str]:
    """The names of a scene's tiles (reads the header only)."""
    with open_scene(scene) as dataset:
        return [spec.name for spec in tile_specs(dataset, options or TileOptions())]


def read_window(
    dataset: DatasetReader,
    window: Window,
    out_shape: tuple[int, int],
    bands: Sequence[int],
    stretch: Stretch | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One window -> (3 x H x W or 1 x H x W uint8, H x W mask of nodata pixels)."""
    height, width = out_shape
    resampling = Resampling.average if window.width > width else Resampling.bilinear
    with gdal_env():
        data = dataset.read(
            list(bands), window=window, out_shape=(len(bands), height, width),
            masked=True, resampling=resampling,
        )  # fmt: skip
    invalid = np.asarray(np.ma.getmaskarray(data).all(axis=0), dtype=bool)
    pixels = to_uint8(np.ma.filled(data, 0), stretch)
    pixels[:, invalid] = 0
    return pixels, invalid


def render_tile(
    dataset: DatasetReader, spec: TileSpec, stretch: Stretch | None, options: TileOptions | None
) -> Image.Image:
    """A tile as RGB; with `options` (indexing), TileSkipped when mostly nodata or blank."""
    bands = resolve_bands(dataset, spec.bands)
    pixels, invalid = read_window(dataset, spec.window, (spec.out, spec.out), bands, stretch)
    if options is not None:
        nodata = float(invalid.mean())
        if nodata > options.max_nodata:
            raise TileSkipped("nodata", f"{nodata:.0%} of the tile is nodata")
        valid = pixels.mean(axis=0)[~invalid]
        spread = float(valid.std()) if valid.size else 0.0
        if spread < options.min_std:
            raise TileSkipped("blank", f"blank tile (grey levels vary by {spread:.2f})")
    return bands_to_rgb(pixels)


def png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG, quickly compressed (tiles are re-read for thumbnails, not archived)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- footprints
@dataclass(frozen=True)
class Footprint:
    """A window's outline in WGS84: a GeoJSON Polygon and its bounding box."""

    polygon: dict[str, Any]
    bbox: tuple[float, float, float, float]  # min_lon, min_lat, max_lon, max_lat


def window_corners(transform: Any, window: Window) -> tuple[list[float], list[float]]:
    """Scene-CRS x, y of a window's corners, counter-clockwise on a north-up map, closed."""
    c0, r0 = float(window.col_off), float(window.row_off)
    c1, r1 = c0 + float(window.width), r0 + float(window.height)
    pixels = [(c0, r0), (c0, r1), (c1, r1), (c1, r0), (c0, r0)]
    points = [transform @ p for p in pixels]
    return [p[0] for p in points], [p[1] for p in points]


def footprint_of(crs: CRS | None, transform: Any, window: Window) -> Footprint | None:
    """The WGS84 footprint of a window (corner points), or None without geo-referencing."""
    if crs is None or transform.is_identity:
        return None
    xs, ys = window_corners(transform, window)
    lons, lats = warp_transform(crs, WGS84, xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lons, lats, strict=True)]
    if _signed_area(ring) < 0:  # RFC 7946: exterior rings counter-clockwise
        ring.reverse()
    bbox = (min(lons), min(lats), max(lons), max(lats))
    return Footprint({"type": "Polygon", "coordinates": [ring]}, tuple(map(float, bbox)))  # type: ignore[arg-type]


def _signed_area(ring: list[list[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))


def tile_geo_columns(dataset: DatasetReader, spec: TileSpec) -> dict[str, Any]:
    """The geo columns of a tile's DB row: pixel window, CRS, footprint and its bounding box."""
    footprint = footprint_of(dataset.crs, dataset.transform, spec.window)
    columns: dict[str, Any] = {
        "win_col": spec.col,
        "win_row": spec.row,
        "win_width": spec.side,
        "win_height": spec.side,
        "crs": crs_string(dataset.crs) if is_georeferenced(dataset) else None,
        "footprint": footprint.polygon if footprint else None,
    }
    bbox = footprint.bbox if footprint else (None, None, None, None)
    columns.update(zip(("min_lon", "min_lat", "max_lon", "max_lat"), bbox, strict=True))
    return columns


# ---------------------------------------------------------------------------- a scene's record
@dataclass(frozen=True)
class SceneRecord:
    """What the metadata DB keeps of a scene: how to read it and where it lies."""

    source: str
    bands: tuple[int, ...]
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    transform: list[float]
    nodata: float | None
    stretch: Stretch | None
    footprint: Footprint | None

    def columns(self) -> dict[str, Any]:
        bbox = self.footprint.bbox if self.footprint else (None, None, None, None)
        return {
            "source": self.source,
            "bands": ",".join(str(b) for b in self.bands),
            "width": self.width,
            "height": self.height,
            "band_count": self.count,
            "dtype": self.dtype,
            "crs": self.crs,
            "transform": self.transform,
            "nodata": self.nodata,
            "stretch": [list(pair) for pair in self.stretch] if self.stretch else None,
            "footprint": self.footprint.polygon if self.footprint else None,
            **dict(zip(("min_lon", "min_lat", "max_lon", "max_lat"), bbox, strict=True)),
        }


def describe_scene(dataset: DatasetReader, source: str, bands: Sequence[int] | None) -> SceneRecord:
    """A scene's record: chosen bands, their stretch, CRS, transform and whole footprint."""
    chosen = resolve_bands(dataset, bands)
    nodata = dataset.nodata
    geo = is_georeferenced(dataset)
    whole = Window(0, 0, dataset.width, dataset.height)
    return SceneRecord(
        source=source,
        bands=chosen,
        width=dataset.width,
        height=dataset.height,
        count=dataset.count,
        dtype=str(dataset.dtypes[chosen[0] - 1]),
        crs=crs_string(dataset.crs) if geo else None,
        transform=list(dataset.transform)[:6],
        nodata=None if nodata is None or math.isnan(nodata) else float(nodata),
        stretch=compute_stretch(dataset, chosen),
        footprint=footprint_of(dataset.crs, dataset.transform, whole) if geo else None,
    )


class SceneTiles:
    """Reads the tiles of one scene, opening it lazily (once per DataLoader worker)."""

    def __init__(self, path: Path, options: TileOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options or TileOptions()
        self._dataset: DatasetReader | None = None
        self._stretch: dict[tuple[int, ...], Stretch | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    @property
    def dataset(self) -> DatasetReader:
        if self._dataset is None or self._dataset.closed:
            self._dataset = open_scene(self.path)
        return self._dataset

    def stretch_for(self, bands: tuple[int, ...]) -> Stretch | None:
        """The scene's stretch of these bands (the same computation the index recorded)."""
        if bands not in self._stretch:
            self._stretch[bands] = compute_stretch(self.dataset, bands)
        return self._stretch[bands]

    def image(self, name: str, skip_empty: bool = True) -> Image.Image:
        """A tile's pixels; when `skip_empty` (indexing), TileSkipped for nodata/blank tiles."""
        spec = TileSpec.parse(name)
        bands = resolve_bands(self.dataset, spec.bands)
        self._check_inside(spec)
        options = self.options if skip_empty else None
        return render_tile(self.dataset, spec, self.stretch_for(bands), options)

    def read(self, name: str) -> bytes:
        """An indexed tile as PNG bytes (thumbnails, files): never skipped."""
        return png_bytes(self.image(name, skip_empty=False))

    def geo_columns(self, name: str) -> dict[str, Any]:
        return tile_geo_columns(self.dataset, TileSpec.parse(name))

    def _check_inside(self, spec: TileSpec) -> None:
        if spec.row + spec.side > self.dataset.height or spec.col + spec.side > self.dataset.width:
            raise SceneError(f"tile {spec.name} lies outside the {self.dataset.shape} scene")

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None
