"""Scene tiling on the tiny generated GeoTIFF (tests/data/make_tiny.py): which windows a scene is
cut into, which are skipped for nodata, and where each lies. Stands without ../shared/data;
the real scenes are tested in test_scenes.py."""

from __future__ import annotations

import pytest
from pyproj import Transformer

from indexer.scenes import (
    TileOptions,
    TileSkipped,
    TileSpec,
    open_scene,
    render_tile,
    scene_tile_names,
    tile_geo_columns,
)
from tests.data.make_tiny import (
    GEO_HEIGHT,
    GEO_NODATA_BORDER,
    GEO_ORIGIN,
    GEO_PIXEL_M,
    GEO_WIDTH,
    Tiny,
)


def test_windows_cover_the_scene_with_a_last_one_flush_with_each_edge(tiny: Tiny) -> None:
    names = scene_tile_names(tiny.geotiff, TileOptions(tile_size=128))
    specs = [TileSpec.parse(n) for n in names]
    assert len(specs) == (GEO_HEIGHT // 128) * (GEO_WIDTH // 128)  # 3 x 4, no remainder
    overlapping = [TileSpec.parse(n) for n in scene_tile_names(tiny.geotiff, TileOptions(200))]
    cols = sorted({s.col for s in overlapping})
    rows = sorted({s.row for s in overlapping})
    assert cols == [0, 200, GEO_WIDTH - 200] and rows == [0, GEO_HEIGHT - 200]


def test_nodata_tiles_are_skipped_at_indexing_and_rendered_when_asked(tiny: Tiny) -> None:
    options = TileOptions(tile_size=64)
    with open_scene(tiny.geotiff) as dataset:
        border = TileSpec.parse(scene_tile_names(tiny.geotiff, options)[0])  # all nodata
        assert border.col < GEO_NODATA_BORDER
        with pytest.raises(TileSkipped, match="nodata"):
            render_tile(dataset, border, None, options)
        assert render_tile(dataset, border, None, None).size == (64, 64)  # reading back
        inside = TileSpec(0, GEO_NODATA_BORDER, 64, 64)
        assert render_tile(dataset, inside, None, options).size == (64, 64)


def test_a_tiles_footprint_is_its_window_in_wgs84(tiny: Tiny) -> None:
    spec = TileSpec(128, 256, 128, 128)
    with open_scene(tiny.geotiff) as dataset:
        columns = tile_geo_columns(dataset, spec)
    assert columns["crs"] == "EPSG:32631"
    assert (columns["win_col"], columns["win_row"], columns["win_width"]) == (256, 128, 128)
    west, north = GEO_ORIGIN[0] + 256 * GEO_PIXEL_M, GEO_ORIGIN[1] - 128 * GEO_PIXEL_M
    east, south = west + 128 * GEO_PIXEL_M, north - 128 * GEO_PIXEL_M
    to_wgs84 = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    lons, lats = to_wgs84.transform([west, east, east, west], [north, north, south, south])
    assert columns["min_lon"] == pytest.approx(min(lons), abs=1e-9)
    assert columns["max_lat"] == pytest.approx(max(lats), abs=1e-9)
    ring = columns["footprint"]["coordinates"][0]
    assert len(ring) == 5 and ring[0] == ring[-1]
