"""The area filter: which indexed tiles intersect a lon/lat box, as a FAISS id selector.

Why a selector: filtering FAISS's top-k afterwards loses hits whenever the area holds few of
the index's images; restricting the search itself to the area's ids keeps it exact (with a
Flat index) however small the area. The DB narrows by bounding boxes (indexed columns), then
each candidate's footprint polygon is tested exactly with shapely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import shapely
from sqlalchemy import Engine, select

from indexer.db import ImageRow, make_sessionmaker

EDGE_ROWS_PER_QUERY = 1000  # ids per IN (...): far under PostgreSQL's and SQLite's limits


class AreaError(ValueError):
    """A malformed or impossible bounding box."""


@dataclass(frozen=True)
class BBox:
    """A WGS84 box: longitudes and latitudes in degrees, west-south-east-north (GeoJSON order)."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    def __post_init__(self) -> None:
        if not (-180 <= self.min_lon <= self.max_lon <= 180):
            raise AreaError(f"longitudes must satisfy -180 <= west <= east <= 180: {self}")
        if not (-90 <= self.min_lat <= self.max_lat <= 90):
            raise AreaError(f"latitudes must satisfy -90 <= south <= north <= 90: {self}")

    @classmethod
    def parse(cls, text: str) -> BBox:
        """'west,south,east,north' in degrees."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise AreaError(f"bbox must be 4 numbers west,south,east,north; got {text!r}") from None
        if len(values) != 4 or not all(np.isfinite(values)):
            raise AreaError(f"bbox must be 4 finite numbers west,south,east,north; got {text!r}")
        return cls(*values)

    def as_list(self) -> list[float]:
        return [self.min_lon, self.min_lat, self.max_lon, self.max_lat]


def ids_in_bbox(
    engine: Engine, bbox: BBox, fingerprint: str | None = None, label: str | None = None
) -> np.ndarray:
    """Ids of the indexed tiles whose footprint intersects `bbox` (and of class `label`)."""
    bounds = (ImageRow.min_lon, ImageRow.min_lat, ImageRow.max_lon, ImageRow.max_lat)
    query = select(ImageRow.id, *bounds).where(
        ImageRow.min_lon <= bbox.max_lon,
        ImageRow.max_lon >= bbox.min_lon,
        ImageRow.min_lat <= bbox.max_lat,
        ImageRow.max_lat >= bbox.min_lat,
    )
    if fingerprint is not None:
        query = query.where(ImageRow.model_fingerprint == fingerprint)
    if label is not None:
        query = query.where(ImageRow.label == label)
    with make_sessionmaker(engine)() as session:
        rows = session.execute(query).all()
    # A box that lies inside the area needs no polygon test; the others are tested exactly.
    inside = [r.id for r in rows if _box_within(r, bbox)]
    edge = [r.id for r in rows if not _box_within(r, bbox)]
    if edge:
        footprints: list[Any] = []
        with make_sessionmaker(engine)() as session:
            for start in range(0, len(edge), EDGE_ROWS_PER_QUERY):  # bounded IN (...) lists
                chunk = edge[start : start + EDGE_ROWS_PER_QUERY]
                footprints += session.execute(
                    select(ImageRow.id, ImageRow.footprint).where(ImageRow.id.in_(chunk))
                ).all()
        polygons = shapely.from_geojson([json.dumps(f) for _, f in footprints])
        hit = shapely.intersects(polygons, shapely.box(*bbox.as_list()))
        inside += [i for (i, _), ok in zip(footprints, hit, strict=True) if ok]
    return np.asarray(sorted(inside), dtype=np.int64)


def _box_within(row: Any, bbox: BBox) -> bool:
    return bool(
        row.min_lon >= bbox.min_lon
        and row.max_lon <= bbox.max_lon
        and row.min_lat >= bbox.min_lat
        and row.max_lat <= bbox.max_lat
    )


def id_selector(ids: np.ndarray) -> faiss.IDSelector:
    """A FAISS selector accepting exactly `ids` (it keeps its own copy of them)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    return faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))
