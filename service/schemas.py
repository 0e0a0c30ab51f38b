"""Request and response bodies of the public HTTP API (they make the OpenAPI schema).

The web page depends on these shapes: change them only together with `service/web.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from indexer.db import JobStatus
from model.datasets import DATASET_KINDS

DatasetKind = Literal["ucm", "nwpu", "satrem", "folder"]
assert set(DATASET_KINDS) == {"ucm", "nwpu", "satrem", "folder"}  # keep the Literal in step


class HitOut(BaseModel):
    id: int
    score: float
    label: str | None
    source: str
    path: str
    thumbnail_url: str
    file_url: str
    scene_id: int | None = Field(default=None, description="Scene of a geo-referenced tile.")
    window: list[int] | None = Field(
        default=None, description="The tile's pixel window in its scene: col, row, width, height."
    )
    crs: str | None = Field(default=None, description="The scene's CRS (EPSG:<code> or WKT).")
    footprint: dict[str, Any] | None = Field(
        default=None, description="The tile's outline in WGS84: a GeoJSON Polygon (lon, lat)."
    )
    bbox: list[float] | None = Field(
        default=None, description="The footprint's bounding box: west, south, east, north."
    )


class SearchResponse(BaseModel):
    hits: list[HitOut]
    k: int
    model_fingerprint: str
    took_ms: float


class SceneOut(BaseModel):
    id: int
    name: str
    width: int
    height: int
    band_count: int
    dtype: str
    bands: list[int] = Field(description="The bands its tiles were made of.")
    stretch: list[list[float]] | None = Field(
        description="Per-band 2-98 % values mapped to 0-255 (None: 8-bit data shown as is)."
    )
    crs: str | None
    footprint: dict[str, Any] | None
    bbox: list[float] | None
    overview_url: str | None = Field(description="The scene in Web Mercator (PNG) for maps.")
    overview_bbox: list[float] | None = Field(
        description="Where the overview lies: west, south, east, north (degrees)."
    )


class ScenesResponse(BaseModel):
    scenes: list[SceneOut]


class ImageOut(BaseModel):
    id: int
    source: str
    path: str
    label: str | None
    width: int
    height: int
    content_hash: str
    model_fingerprint: str
    index_version: int
    created_at: datetime | None
    thumbnail_url: str
    file_url: str
    similar_url: str
    scene_id: int | None = None
    window: list[int] | None = None
    crs: str | None = None
    footprint: dict[str, Any] | None = None
    bbox: list[float] | None = None


class PredictionOut(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[PredictionOut]
    took_ms: float
    explanation_png_base64: str | None = Field(
        default=None, description="The model's attention or CAM map (PNG), when asked for."
    )


class ModelOut(BaseModel):
    name: str
    kind: Literal["embedder", "classifier"]
    dataset: str
    classes: list[str]
    fingerprint: str
    init: str
    method: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    models: list[ModelOut]


class EvaluationRequest(BaseModel):
    dataset: DatasetKind = Field(description="Layout of the images under `root`.")
    root: str | None = Field(
        default=None,
        description="Folder inside the server's data root (relative or absolute); "
        "default: the data root itself, where the registered datasets live.",
    )
    model: str | None = Field(default=None, description="Embedder name; default: the served one.")
    protocol: Literal["split", "all-vs-all"] = "split"
    seed: int | None = Field(
        default=None, ge=0, le=2**32 - 1, description="Split seed; default: the checkpoint's."
    )
    per_class: int | None = Field(default=None, ge=1, description="Cap images per class.")


class SceneTiling(BaseModel):
    """How a GeoTIFF scene is cut into tiles (`rsir index --tile-size ...`)."""

    tile_size: int = Field(default=256, ge=8, le=4096, description="Tile side, output pixels.")
    stride: int | None = Field(default=None, ge=1, description="Source pixels between tiles.")
    resolution: float | None = Field(
        default=None, gt=0, description="Ground size of a tile pixel (scene CRS units)."
    )
    bands: list[int] | None = Field(
        default=None, min_length=1, max_length=3, description="1 or 3 band numbers, e.g. [4,3,2]."
    )
    max_nodata: float = Field(default=0.5, ge=0, le=1, description="Skip tiles above this.")


class IndexJobRequest(BaseModel):
    source: str = Field(
        min_length=1,
        description="Folder, .zip, .tar(.gz) or .tif inside the data root (not the root itself).",
    )
    factory: str | None = Field(default=None, description="FAISS factory string (new index).")
    tiles: SceneTiling | None = Field(default=None, description="For a GeoTIFF scene.")


class JobOut(BaseModel):
    """Fields common to every job."""

    id: int
    kind: str
    status: JobStatus
    progress: float
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: dict[str, Any] | None
    error: str | None
    url: str


class EvaluationOut(JobOut):
    dataset: str
    protocol: str
    model: str | None
    root: str
    pr_curve_url: str | None


class IndexJobOut(JobOut):
    source: str
    factory: str | None


class EvaluationList(BaseModel):
    items: list[EvaluationOut]


class IndexJobList(BaseModel):
    items: list[IndexJobOut]
