"""Geo-referenced scenes on the two real GeoTIFFs of ../shared/data/geotiff: tiles, footprints,
nodata skipping, the recorded stretch, the migration, and a query tile finding itself.

The footprints are checked against an independent computation: the geotransform read from the
raw GeoTIFF tags with tifffile (not rasterio) and corners projected with pyproj (not GDAL).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import tifffile
from PIL import Image
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry import shape
from sqlalchemy import inspect, select
from typer.testing import CliRunner

from indexer.area import BBox, ids_in_bbox
from indexer.cli import app as cli_app
from indexer.db import ImageRow, SceneRow, make_engine, make_sessionmaker, upgrade_db
from indexer.geoquery import decode_query, place_image
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from indexer.scenes import SceneError, TileOptions, TileSpec, parse_bands, scene_tile_names
from indexer.search import Searcher
from indexer.sources import canonical_source
from model.imageio import decode_image
from tests.conftest import DATA_ROOT

GEOTIFF = DATA_ROOT / "geotiff"
COG = GEOTIFF / "cogeo.tif"
LANDSAT = GEOTIFF / "RGB.byte.tif"

pytestmark = pytest.mark.slow


def raw_geotransform(path: Path) -> tuple[float, float, float, float, int]:
    """(x0, y0, pixel width, pixel height, EPSG) from the GeoTIFF tags themselves."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags  # type: ignore[union-attr]
        sx, sy, _ = tags["ModelPixelScaleTag"].value
        _, _, _, x0, y0, _ = tags["ModelTiepointTag"].value
        geo = tif.geotiff_metadata
    epsg = int(geo["ProjectedCSTypeGeoKey"])
    return x0, y0, sx, sy, epsg


def expected_ring(path: Path, col: int, row: int, side: int) -> np.ndarray:
    """The window's corners in lon/lat, by pyproj from the raw tags."""
    x0, y0, sx, sy, epsg = raw_geotransform(path)
    to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
    cols = np.array([col, col + side, col + side, col])
    rows = np.array([row, row, row + side, row + side])
    lon, lat = to_wgs84.transform(x0 + cols * sx, y0 - rows * sy)
    return np.stack([lon, lat], axis=1)


def same_corners(polygon: dict, expected: np.ndarray, tol: float = 1e-9) -> bool:
    ring = np.asarray(polygon["coordinates"][0])
    assert polygon["type"] == "Polygon" and len(ring) == 5 and (ring[0] == ring[-1]).all()
    return all(np.abs(ring[:4] - e).max(axis=1).min() < tol for e in expected)


def rows_of(index_dir: Path, source: Path) -> list[ImageRow]:
    engine = make_engine(f"sqlite:///{index_dir / 'metadata.db'}")
    with make_sessionmaker(engine)() as session:
        rows = list(
            session.scalars(select(ImageRow).where(ImageRow.source == canonical_source(source)))
        )
    engine.dispose()
    return rows


@pytest.fixture(scope="module")
def geo_index(other_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The COG and the Landsat subset indexed in one index (256-px tiles)."""
    index_dir = tmp_path_factory.mktemp("geo-index")
    for scene in (COG, LANDSAT):
        summary = index_source(
            scene,
            other_checkpoint,
            IndexOptions(index_dir=index_dir, num_workers=0, batch_size=8, device="cpu"),
        )
        assert summary.corrupt == 0 and summary.scene_id is not None, summary
    return index_dir


def test_footprints_match_an_independent_pyproj_computation(geo_index: Path) -> None:
    for scene, epsg in ((COG, 3857), (LANDSAT, 32618)):
        rows = rows_of(geo_index, scene)
        assert rows
        for row in rows:
            spec = TileSpec.parse(row.path)
            assert [row.win_col, row.win_row, row.win_width, row.win_height] == [
                spec.col, spec.row, 256, 256,
            ]  # fmt: skip
            assert row.crs == f"EPSG:{epsg}"
            expected = expected_ring(scene, row.win_col, row.win_row, 256)  # type: ignore[arg-type]
            assert same_corners(row.footprint, expected), (row.path, row.footprint)  # type: ignore[arg-type]
            assert row.min_lon == pytest.approx(expected[:, 0].min(), abs=1e-9)
            assert row.max_lat == pytest.approx(expected[:, 1].max(), abs=1e-9)


def test_cog_is_cut_whole_and_landsat_nodata_border_tiles_are_skipped_and_counted(
    other_checkpoint: Path, tmp_path: Path
) -> None:
    # 1024 x 1024 COG: 16 tiles, none skipped.
    assert len(scene_tile_names(COG)) == 16
    # Landsat 791 x 718: 4 x 3 windows (the last ones flush with the edge).
    names = scene_tile_names(LANDSAT)
    assert len(names) == 12 and "tile_462_535_256.png" in names
    # Independently: a tile is mostly nodata when more than half its pixels are 0 in all bands.
    pixels = tifffile.imread(LANDSAT)  # small enough to read whole in a test
    nodata = (pixels == 0).all(axis=-1) if pixels.shape[-1] == 3 else (pixels == 0).all(axis=0)
    expected_skipped = {
        n for n in names
        if nodata[TileSpec.parse(n).row :][:256, TileSpec.parse(n).col :][:, :256].mean() > 0.5
    }  # fmt: skip
    assert expected_skipped  # the rotated scene leaves corner tiles outside the image
    summary = index_source(
        LANDSAT,
        other_checkpoint,
        IndexOptions(index_dir=tmp_path / "idx", num_workers=0, device="cpu"),
    )
    assert summary.skipped_nodata == len(expected_skipped)
    assert summary.added == len(names) - len(expected_skipped)
    indexed = {row.path for row in rows_of(tmp_path / "idx", LANDSAT)}
    assert indexed == set(names) - expected_skipped
    # A stricter threshold skips more; a re-run adds nothing and skips the same tiles again.
    again = index_source(
        LANDSAT,
        other_checkpoint,
        IndexOptions(index_dir=tmp_path / "idx", num_workers=0, device="cpu"),
    )
    assert again.added == 0 and again.skipped_nodata == len(expected_skipped)


def test_tile_options_stride_resolution_bands() -> None:
    with rasterio.open(COG) as dataset:
        assert dataset.overviews(1)  # a real COG: read by blocks, overviews for the stretch
    overlap = scene_tile_names(COG, TileOptions(tile_size=256, stride=128))
    assert len(overlap) == 7 * 7
    coarse = scene_tile_names(COG, TileOptions(tile_size=128, resolution=0.5971640348434448 * 4))
    assert coarse[:2] == ["tile_0_0_512_128.png", "tile_0_512_512_128.png"] and len(coarse) == 4
    chosen = scene_tile_names(COG, TileOptions(bands=(3, 2, 1)))
    assert chosen[0] == "tile_0_0_256_b3-2-1.png"
    assert TileSpec.parse(chosen[0]) == TileSpec(0, 0, 256, 256, (3, 2, 1))
    with pytest.raises(SceneError, match="do not exist"):
        scene_tile_names(COG, TileOptions(bands=(4, 3, 2)))
    with pytest.raises(SceneError, match="1 or 3 bands"):
        TileOptions(bands=(1, 2))
    assert parse_bands("4,3,2") == (4, 3, 2)
    with pytest.raises(SceneError):
        parse_bands("red,green")


def test_query_tile_cut_from_a_scene_finds_itself_with_its_footprint(
    geo_index: Path, tmp_path: Path
) -> None:
    window = Window(512, 256, 256, 256)
    query = tmp_path / "query.tif"
    with rasterio.open(COG) as src:
        profile = src.profile | {
            "width": 256, "height": 256, "transform": src.window_transform(window),
            "compress": "deflate", "photometric": "rgb", "tiled": False,
        }  # fmt: skip
        profile.pop("blockxsize"), profile.pop("blockysize")
        with rasterio.open(query, "w", **profile) as dst:
            dst.write(src.read(window=window))
    searcher = Searcher.open(geo_index, device="cpu")
    engine = searcher.store.engine
    image = decode_query(query.read_bytes(), engine, 10**8)
    hits = searcher.search_images([image], k=5)[0]
    first = hits[0]
    assert first.path == "tile_256_512_256.png" and first.score > 0.999
    assert first.window == [512, 256, 256, 256] and first.crs == "EPSG:3857"
    row = next(r for r in rows_of(geo_index, COG) if r.path == first.path)
    assert first.footprint == row.footprint and first.bbox == [
        row.min_lon, row.min_lat, row.max_lon, row.max_lat,
    ]  # fmt: skip
    assert same_corners(first.footprint, expected_ring(COG, 512, 256, 256))  # type: ignore[arg-type]
    # Query by place: the same window of the indexed scene, no upload.
    place = place_image(engine, int(row.scene_id), window=window)  # type: ignore[arg-type]
    assert searcher.search_images([place.image], k=1)[0][0].path == first.path


def scaled_scene(dest: Path) -> Path:
    """A 12-bit, 4-band version of the real COG (same place): bands 1-3 x 13 + 300, band 4 flat."""
    with rasterio.open(COG) as src:
        data = src.read().astype(np.uint16) * 13 + 300
        profile = src.profile | {"dtype": "uint16", "count": 4, "compress": "deflate",
                                 "photometric": "minisblack"}  # fmt: skip
    with rasterio.open(dest, "w", **profile) as dst:
        dst.write(np.concatenate([data, np.full_like(data[:1], 1000)]))
    return dest


def test_twelve_bit_scene_stretch_is_recorded_and_applied_to_queries(
    other_checkpoint: Path, tmp_path: Path
) -> None:
    scene = scaled_scene(tmp_path / "scene12.tif")
    index_dir = tmp_path / "idx"
    summary = index_source(
        scene,
        other_checkpoint,
        IndexOptions(index_dir=index_dir, num_workers=0, device="cpu"),
        tiles=TileOptions(bands=(3, 2, 1)),
    )
    assert summary.added == 16
    engine = make_engine(f"sqlite:///{index_dir / 'metadata.db'}")
    with make_sessionmaker(engine)() as session:
        record = session.scalars(select(SceneRow)).one()
    assert record.bands == "3,2,1" and record.dtype == "uint16" and record.band_count == 4
    with rasterio.open(scene) as src:
        band3 = src.read(3, out_shape=(1024, 1024))
    assert record.stretch is not None
    assert record.stretch[0] == pytest.approx(list(np.percentile(band3, [2, 98])), rel=1e-6)
    # A 16-bit 4-band query cut from the scene is stretched with the recorded values, so it
    # finds itself; decoded on its own (first 3 bands, its own min-max) it would not match.
    window = Window(256, 768, 256, 256)
    query = tmp_path / "query12.tif"
    with rasterio.open(scene) as src:
        profile = src.profile | {"width": 256, "height": 256,
                                 "transform": src.window_transform(window)}  # fmt: skip
        with rasterio.open(query, "w", **profile) as dst:
            dst.write(src.read(window=window))
    searcher = Searcher.open(index_dir, device="cpu")
    stretched = decode_query(query.read_bytes(), engine, 10**8)
    hit = searcher.search_images([stretched], k=1)[0][0]
    assert hit.path == "tile_768_256_256_b3-2-1.png" and hit.score > 0.999
    naive = decode_image(query.read_bytes())
    assert np.abs(np.asarray(naive, int) - np.asarray(stretched, int)).mean() > 10
    engine.dispose()


def test_geo_migration_up_and_down_on_both_databases(db_url: str) -> None:
    upgrade_db(db_url)
    engine = make_engine(db_url)
    columns = {c["name"] for c in inspect(engine).get_columns("images")}
    assert {"scene_id", "win_col", "win_row", "crs", "footprint", "min_lon", "max_lat"} <= columns
    assert "scenes" in inspect(engine).get_table_names()
    from alembic import command
    from alembic.config import Config

    from indexer.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    command.downgrade(config, "0002_jobs")
    engine.dispose()
    engine = make_engine(db_url)
    assert "scenes" not in inspect(engine).get_table_names()
    assert "footprint" not in {c["name"] for c in inspect(engine).get_columns("images")}
    engine.dispose()
    upgrade_db(db_url)


def test_bbox_search_equals_brute_force(geo_index: Path, tmp_path: Path) -> None:
    searcher = Searcher.open(geo_index, device="cpu")
    engine = searcher.store.engine
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(ImageRow)))
    vectors = {r.id: searcher.store.reconstruct(r.id) for r in rows}
    with rasterio.open(LANDSAT) as src:
        pixels = src.read(window=Window(300, 200, 256, 256))
    query = searcher.model.embed_images([Image.fromarray(np.moveaxis(pixels, 0, -1))])
    rng = np.random.default_rng(0)
    areas = [BBox(-78.2, 24.0, -77.4, 24.6), BBox(128.6, 37.6, 128.7, 37.7), BBox(0, 0, 1, 1)]
    for _ in range(6):  # random boxes over both scenes' region
        lon = np.sort(rng.uniform(-79.5, -76.0, 2))
        lat = np.sort(rng.uniform(23.0, 26.0, 2))
        areas.append(BBox(lon[0], lat[0], lon[1], lat[1]))
    for area in areas:
        box = shapely.box(*area.as_list())
        inside = [r.id for r in rows if r.footprint and shape(r.footprint).intersects(box)]
        assert set(ids_in_bbox(engine, area).tolist()) == set(inside), area
        brute = sorted(inside, key=lambda i: -float(vectors[i] @ query[0]))[:5]
        hits = searcher.search_images([Image.fromarray(np.moveaxis(pixels, 0, -1))], 5, None, area)
        assert [h.id for h in hits[0]] == brute, area
    # The CLI prints a FeatureCollection of the filtered hits.
    tile = tmp_path / "tile.png"
    Image.fromarray(np.moveaxis(pixels, 0, -1)).save(tile)
    area = areas[0]
    result = CliRunner().invoke(
        cli_app,
        ["search", str(tile), "--index-dir", str(geo_index), "--geojson", "-k", "50",
         "--bbox", ",".join(map(str, area.as_list()))],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    collection = json.loads(result.output)
    assert collection["type"] == "FeatureCollection" and collection["features"]
    for feature in collection["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and geometry.intersects(shapely.box(*area.as_list()))
        assert feature["properties"]["crs"] == "EPSG:32618"
    bad = CliRunner().invoke(cli_app, ["search", str(tile), "--index-dir", str(geo_index),
                                       "--bbox", "1,2"])  # fmt: skip
    assert bad.exit_code == 2 and "bbox" in bad.output


def test_reading_an_indexed_tile_back_never_skips_it() -> None:
    # 52 % nodata: skipped by a default run, indexed by a run with --max-nodata 0.9; its
    # thumbnail must read either way (reading back applies no skipping).
    from indexer.sources import SourceReader, read_entry

    reader = SourceReader(LANDSAT, tiles=TileOptions(max_nodata=0.9))
    assert reader.scene_image("tile_0_0_256.png") is not None
    png = read_entry(str(LANDSAT), "tile_0_0_256.png")
    assert Image.open(io.BytesIO(png)).size == (256, 256)
