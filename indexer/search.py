"""Query an index: embed the query with the index's own model (and whitening), FAISS top-k,
rows from the DB."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Engine, select

from indexer.area import BBox, id_selector, ids_in_bbox
from indexer.db import ImageRow, make_engine, make_sessionmaker
from indexer.embedding import EmbeddingModel, load_embedding_model
from indexer.engines import VectorIndex, open_index
from indexer.feedback import Feedback, apply_feedback
from indexer.index_model import read_model_file, recorded_whitening
from model.checkpoint import Checkpoint
from model.whitening import descriptor_fingerprint
from rsir_common.settings import Settings, sqlite_url_for


@dataclass
class Hit:
    """One search result."""

    id: int
    score: float
    source: str
    path: str
    label: str | None
    # Tiles of a geo-referenced scene: where they lie (None for plain images).
    scene_id: int | None = None
    window: list[int] | None = None  # col, row, width, height in scene pixels
    crs: str | None = None
    footprint: dict[str, Any] | None = field(default=None)  # GeoJSON Polygon, WGS84
    bbox: list[float] | None = None  # west, south, east, north

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hit_from_row(row: ImageRow, score: float) -> Hit:
    """A hit with the row's place, when it has one."""
    corners = (row.win_col, row.win_row, row.win_width, row.win_height)
    window = [int(v) for v in corners if v is not None] if row.win_col is not None else None
    bounds = (row.min_lon, row.min_lat, row.max_lon, row.max_lat)
    bbox = [float(v) for v in bounds if v is not None] if row.min_lon is not None else None
    return Hit(
        row.id, score, row.source, row.path, row.label,
        scene_id=row.scene_id, window=window, crs=row.crs, footprint=row.footprint, bbox=bbox,
    )  # fmt: skip


# Ids per `IN (...)` when reading hits' rows: far under PostgreSQL's 65,535 and SQLite's
# 32,766 parameters per statement, whatever k a caller asks for.
ROWS_PER_QUERY = 1000


def hits_for(engine: Engine, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
    """Join one row of FAISS results with the DB rows, keeping FAISS's order."""
    wanted = [int(i) for i in ids if i >= 0]
    if not wanted:
        return []
    rows: dict[int, ImageRow] = {}
    with make_sessionmaker(engine)() as session:
        for start in range(0, len(wanted), ROWS_PER_QUERY):
            chunk = wanted[start : start + ROWS_PER_QUERY]
            rows.update(
                (r.id, r) for r in session.scalars(select(ImageRow).where(ImageRow.id.in_(chunk)))
            )
    return [
        hit_from_row(rows[int(i)], float(s))
        for s, i in zip(scores, ids, strict=True)
        if int(i) in rows
    ]


def label_ids(engine: Engine, label: str, fingerprint: str) -> np.ndarray:
    """Ids of the images of class `label`, streamed from the DB (no id list goes back to it)."""
    query = (
        select(ImageRow.id)
        .where(ImageRow.label == label, ImageRow.model_fingerprint == fingerprint)
        .execution_options(yield_per=10_000)
    )
    with make_sessionmaker(engine)() as session:
        return np.fromiter(session.scalars(query), dtype=np.int64)


def ranked_hits(
    store: VectorIndex,
    vector: np.ndarray,
    k: int,
    label: str | None = None,
    exclude: int | None = None,
) -> list[Hit]:
    """Top-k hits for one query vector: the one label filter of the CLI and the service.

    With `label`, FAISS ranks only that class's ids (an id selector), so the answer is as exact
    as the index however rare the class, and no SQL statement grows with the class's size.
    `exclude` leaves one id out (the query image itself, for "more like this").
    """
    selector = None
    if label is not None:
        ids = label_ids(store.engine, label, store.fingerprint)
        if exclude is not None:
            ids = ids[ids != exclude]
        if ids.size == 0:
            return []
        selector = id_selector(ids)
    fetch = k + (1 if exclude is not None else 0)
    scores, found = store.search(
        np.asarray(vector, dtype=np.float32)[None], fetch, selector=selector
    )
    hits = hits_for(store.engine, scores[0], found[0])
    return [hit for hit in hits if hit.id != exclude][:k]


class Searcher:
    """A loaded model + index + DB: the resources a query needs, loaded once."""

    def __init__(
        self,
        model: EmbeddingModel,
        checkpoint: Checkpoint,
        store: VectorIndex,
        checkpoint_path: Path,
    ) -> None:
        fingerprint = descriptor_fingerprint(checkpoint.fingerprint, model.whitening)
        if fingerprint != store.fingerprint:
            raise ValueError(
                f"index was made by model {store.fingerprint}; "
                f"this checkpoint (and whitening) is model {fingerprint}"
            )
        self.model = model
        self.checkpoint = checkpoint
        self.store = store
        self.checkpoint_path = Path(checkpoint_path)  # the file `checkpoint` was loaded from

    @classmethod
    def open(
        cls,
        index_dir: Path,
        checkpoint_path: Path | None = None,
        db_url: str | None = None,
        device: str = "auto",
        runtime: str = "auto",
    ) -> Searcher:
        """Load the index of `index_dir` and the model that made it (or refuse another one), with
        the whitening the index records (refused if it is not this checkpoint's or the index's)."""
        index_dir = Path(index_dir)
        if checkpoint_path is None:
            recorded = read_model_file(index_dir)
            if recorded is None:
                raise FileNotFoundError(f"no index in {index_dir}: run `rsir index` first")
            checkpoint_path = Path(recorded["checkpoint"])
        url = db_url or sqlite_url_for(index_dir)
        model, ckpt = load_embedding_model(checkpoint_path, device, runtime)
        model = model.with_whitening(recorded_whitening(index_dir, ckpt.fingerprint))
        fingerprint = descriptor_fingerprint(ckpt.fingerprint, model.whitening)
        store = open_index(index_dir, make_engine(url), fingerprint=fingerprint)
        return cls(model, ckpt, store, checkpoint_path)

    @classmethod
    def from_settings(cls, settings: Settings, checkpoint_path: Path | None = None) -> Searcher:
        """The configured index, searched with `checkpoint_path`, else the configured
        checkpoint, else the one the index records; on the configured device and runtime."""
        return cls.open(
            settings.index_dir,
            checkpoint_path or settings.checkpoint,
            settings.resolved_db_url(),
            settings.device,
            settings.runtime,
        )

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, label: str | None = None, bbox: BBox | None = None
    ) -> list[list[Hit]]:
        """Top-k hits per query vector; with `label`, only hits of that class; with `bbox`,
        only tiles whose footprint intersects it (searched with a FAISS id selector: exact)."""
        if bbox is not None:
            return [area_search(self.store, v[None], k, label, bbox) for v in vectors]
        if label is not None:
            return [ranked_hits(self.store, v, k, label) for v in vectors]
        scores, ids = self.store.search(vectors, k)
        return [hits_for(self.store.engine, s, i) for s, i in zip(scores, ids, strict=True)]

    def search_images(
        self,
        images: list[Image.Image],
        k: int = 10,
        label: str | None = None,
        bbox: BBox | None = None,
        feedback: Feedback | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits for each query image (one forward pass for all of them), each query
        moved first by the relevance `feedback` when there is some."""
        vectors = self.model.embed_images(images)
        if feedback:
            vectors = np.stack([apply_feedback(self.store, v, feedback) for v in vectors])
        return self.search_vectors(vectors, k, label, bbox)


def area_search(
    store: VectorIndex, vector: np.ndarray, k: int, label: str | None, bbox: BBox
) -> list[Hit]:
    """Top-k among the tiles intersecting `bbox` (and of class `label`) for one query vector."""
    ids = ids_in_bbox(store.engine, bbox, store.fingerprint, label)
    if ids.size == 0:
        return []
    scores, found = store.search(vector, min(k, int(ids.size)), selector=id_selector(ids))
    return hits_for(store.engine, scores[0], found[0])
