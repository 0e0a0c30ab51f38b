"""Hits as a GeoJSON FeatureCollection (RFC 7946) that QGIS and geopandas open as it is.

Each hit is a Feature: its footprint polygon (WGS84 lon/lat) as geometry, its bbox, its id,
and every other field (rank, score, label, source, path, scene, window, CRS, URLs) as
properties. A hit without a place (a plain image) has a null geometry, which GeoJSON allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MEDIA_TYPE = "application/geo+json"
_GEOMETRY_FIELDS = ("footprint", "bbox")


def hit_feature(hit: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """One hit (a dict of its fields) as a Feature."""
    properties = {"rank": rank, **{k: v for k, v in hit.items() if k not in _GEOMETRY_FIELDS}}
    feature: dict[str, Any] = {
        "type": "Feature",
        "id": hit.get("id"),
        "geometry": hit.get("footprint"),
        "properties": properties,
    }
    if hit.get("bbox") is not None:
        feature["bbox"] = list(hit["bbox"])
    return feature


def feature_collection(hits: Iterable[Mapping[str, Any]], **members: Any) -> dict[str, Any]:
    """Ranked hits as a FeatureCollection; `members` (k, model, took_ms...) ride along as
    foreign members, which GeoJSON readers ignore."""
    features = [hit_feature(hit, rank) for rank, hit in enumerate(hits, 1)]
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    boxes = [f["bbox"] for f in features if "bbox" in f]
    if boxes:
        collection["bbox"] = [
            min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes),
        ]  # fmt: skip
    collection.update(members)
    return collection
