"""The search engine: the embedder, the index it queries and the batcher in front of both.

Queries reach the network only through the search `Batcher`, which puts concurrent queries
into one forward pass and one index search. The index may come later than the embedder (an
index job writes it) or change under it (another process commits, or writes a whitened index):
`refresh_index` adopts it, so the engine never has to be rebuilt while the service runs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import torch
from PIL import Image
from sqlalchemy import Engine

from indexer.area import BBox
from indexer.db import ImageRow, make_sessionmaker
from indexer.embedding import EmbeddingModel, load_embedding_model
from indexer.engines import VectorIndex, open_index
from indexer.feedback import Feedback, UnknownFeedbackIdError, apply_feedback
from indexer.index_model import read_model_file, whitening_for_serving
from indexer.removal import IndexBusyError, UnknownImageError, remove_images
from indexer.search import Hit, area_search, hits_for, ranked_hits
from indexer.store import ModelMismatchError
from model.checkpoint import Checkpoint
from model.imageio import decode_image
from model.whitening import WhiteningMismatchError, descriptor_fingerprint
from rsir_common.settings import Settings
from service.batcher import Batcher
from service.errors import (
    ModelMismatchServiceError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    UnknownModelError,
)
from service.explain import embedder_cam, overlay_png
from service.metrics import Metrics
from service.security import public_problem
from service.sources import SourceCache

log = logging.getLogger(__name__)

# A search batch item: (preprocessed image, how many hits to fetch; 0: embed only)
# -> (vector, scores, ids)
SearchItem = tuple[torch.Tensor, int]
SearchOut = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SearchOptions:
    """Which hits a query wants, by image or by indexed id: how many, of which class, and the
    relevance feedback that moves the query first (one value, so that every layer between the
    route and the engine passes the same thing)."""

    k: int
    label: str | None = None
    feedback: Feedback | None = None


@dataclass
class SearchResult:
    """Ranked hits and the model that ranked them."""

    hits: list[Hit]
    model_fingerprint: str


class SearchEngine:
    """Embedder + index + search batcher. `load()` once, `close()` at exit."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.model: EmbeddingModel | None = None  # with the index's whitening, once it is open
        self._raw_model: EmbeddingModel | None = None
        self.checkpoint: Checkpoint | None = None
        self.embedder_name: str | None = None
        self.checkpoint_path: Path | None = None
        self.store: VectorIndex | None = None
        self.batcher: Batcher[SearchItem, SearchOut] | None = None
        self._embedder_problem: str | None = None
        self._index_error: ServiceError | None = None
        self._reload_lock = threading.Lock()
        self.sources = SourceCache(settings.max_pixels)

    # ------------------------------------------------------------------ life cycle
    def load(self) -> None:
        """Load the embedder, then the index; what fails is recorded (see `problems`)."""
        self._load_embedder()
        self._load_index()
        self.metrics.index_size.set_function(lambda: float(self.store.ntotal if self.store else 0))

    def close(self) -> None:
        """Stop the batcher (finishing queued queries)."""
        if self.batcher is not None:
            self.batcher.stop()

    @property
    def problems(self) -> list[str]:
        """What keeps the engine from serving, as clients may see it (at most one per part)."""
        found = [self._embedder_problem] if self._embedder_problem else []
        return found + ([self._index_error.detail] if self._index_error is not None else [])

    def _load_embedder(self) -> None:
        path = self.settings.checkpoint
        if path is None:  # the checkpoint that `rsir index` recorded beside the index
            recorded = read_model_file(Path(self.settings.index_dir))
            path = Path(recorded["checkpoint"]) if recorded else None
        if path is None:
            self._embedder_problem = self._public(
                "no embedder checkpoint configured (RSIR_CHECKPOINT) and none recorded in "
                f"{self.settings.index_dir}"
            )
            return
        try:
            model, ckpt = load_embedding_model(
                Path(path), self.settings.device, self.settings.runtime
            )
        except Exception as exc:
            log.exception("cannot load embedder %s", path)
            self._embedder_problem = self._public(f"embedder {path}: {exc}", path)
            return
        self.model = self._raw_model = model
        self.checkpoint = ckpt
        self.checkpoint_path = Path(path).resolve()
        self.embedder_name = Path(path).stem
        batcher: Batcher[SearchItem, SearchOut] = Batcher(
            self._search_batch,
            self.settings.batch_max_size,
            self.settings.batch_max_wait_ms,
            name="search",
            on_batch=self.metrics.batch_observer("search"),
        )
        batcher.start()
        self.batcher = batcher
        self.metrics.track_queue("search", lambda: batcher.depth)
        log.info(
            "embedder %s (%s) on %s, runtime %s",
            self.embedder_name,
            ckpt.fingerprint,
            model.device,
            model.runtime,
        )

    def _load_index(self) -> None:
        if self._raw_model is None or self.checkpoint is None:
            return
        try:
            whitening = whitening_for_serving(
                Path(self.settings.index_dir), self.checkpoint.fingerprint, self.settings.whitening
            )
            model = self._raw_model.with_whitening(whitening)
            store = open_index(
                self.settings.index_dir,
                self.engine,
                fingerprint=descriptor_fingerprint(self.checkpoint.fingerprint, whitening),
                dim=model.dim,
                **self._engine_options(),
            )
        except (ModelMismatchError, WhiteningMismatchError) as exc:
            self._index_error = ModelMismatchServiceError(self._public(str(exc)))
            log.error("%s", exc)
            return
        except Exception as exc:
            log.exception("cannot open the index in %s", self.settings.index_dir)
            self._index_error = NotReadyError(
                self._public(f"index in {self.settings.index_dir}: {exc}")
            )
            return
        self.store, self.model, self._index_error = store, model, None
        log.info(
            "index %s: %d %d-d vectors of model %s (v%d)",
            store.index_dir,
            store.ntotal,
            model.dim,
            store.fingerprint,
            store.version,
        )

    def _public(self, problem: str, *files: Path | str) -> str:
        """`problem` as clients see it: the named files, the index folder and the whitening
        artifact by their public paths (service/security.py), one line; the log has it whole."""
        paths = [*files, self.settings.index_dir]
        if self.checkpoint_path is not None:
            paths.append(self.checkpoint_path)
        if self.settings.whitening is not None:
            paths.append(self.settings.whitening)
        return public_problem(problem, Path(self.settings.data_root), paths)

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the vectors queries become: the checkpoint's, or with the index's
        whitening the checkpoint's and the projection's."""
        if self.checkpoint is None or self.model is None:
            return None
        return descriptor_fingerprint(self.checkpoint.fingerprint, self.model.whitening)

    def whitening_identity(self) -> dict[str, Any] | None:
        """The whitening queries go through (method, dimensions, source), or None."""
        whitening = self.model.whitening if self.model is not None else None
        return dict(whitening.identity()) if whitening is not None else None

    def _binding_changed(self) -> bool:
        """True when the index on disk now holds other vectors than the ones queries become
        (e.g. the first index job made a whitened index after the service started)."""
        recorded = read_model_file(Path(self.settings.index_dir))
        return recorded is not None and recorded.get("fingerprint") != self.fingerprint

    def _engine_options(self) -> dict[str, Any]:
        """The vector engine settings (FAISS segments by default, or Milvus)."""
        s = self.settings
        return {
            "vector_engine": s.vector_engine,
            "milvus_uri": s.milvus_uri,
            "milvus_collection": s.milvus_collection,
        }

    @property
    def index_retryable(self) -> bool:
        """A missing index may still come (written later, a disk back): all but a model mismatch."""
        return self.model is not None and not isinstance(
            self._index_error, ModelMismatchServiceError
        )

    def refresh_index(self) -> bool:
        """Pick up a newer index version (an index job or `rsir index` wrote one)."""
        with self._reload_lock:
            if self.store is None:
                if self.index_retryable:
                    self._load_index()
                return self.store is not None
            try:
                changed = self.store.reload_if_changed()
            except Exception:
                log.exception("reloading the index failed; keeping version %d", self.store.version)
                return False
            if changed and self._binding_changed():
                self.store = None
                self._load_index()
            return changed

    def index_status(self) -> dict[str, Any] | None:
        """The served index (size, version, model, whitening), or None before it is open."""
        if self.store is None:
            return None
        return {
            "ntotal": self.store.ntotal,
            "version": self.store.version,
            "fingerprint": self.store.fingerprint,
            "whitening": self.whitening_identity(),
        }

    @property
    def ready(self) -> bool:
        """Queries can be answered: an embedder and an index of its vectors are loaded."""
        return self.model is not None and self.store is not None

    def embedder_checkpoint_for(self, name: str | None) -> Path:
        """The checkpoint file of the named embedder (None: the served one), or 404."""
        if self.checkpoint_path is None or self.embedder_name is None:
            raise NotReadyError("no embedder is loaded")
        if name not in (
            None,
            "",
            self.embedder_name,
            self.checkpoint and self.checkpoint.fingerprint,
        ):
            raise UnknownModelError(f"unknown embedder {name!r}; loaded: {[self.embedder_name]}")
        return self.checkpoint_path

    # ------------------------------------------------------------------ search
    def _not_loaded(self) -> NotReadyError:
        return NotReadyError("no embedder loaded: " + "; ".join(self.problems))

    def _ready_search(self) -> tuple[EmbeddingModel, VectorIndex, Batcher[Any, Any]]:
        if self.model is None or self.batcher is None:
            raise self._not_loaded()
        if self.store is None:
            raise self._index_error or NotReadyError("no index loaded")
        return self.model, self.store, self.batcher

    def _search_batch(self, items: list[SearchItem]) -> list[SearchOut]:
        """One forward pass and one index search for a whole batch of queries."""
        model, store, _ = self._ready_search()
        vectors = model.embed_tensors(torch.stack([tensor for tensor, _ in items]))
        fetch = max(k for _, k in items)
        if fetch == 0:  # label-filtered queries search on their own (ranked_hits)
            none = np.zeros((len(items), 0))
            return [(vectors[i], none[i].astype(np.float32), none[i].astype(np.int64))
                    for i in range(len(items))]  # fmt: skip
        scores, ids = store.search(vectors, fetch)
        return [(vectors[i], scores[i], ids[i]) for i in range(len(items))]

    async def search(
        self, image: Image.Image, options: SearchOptions, bbox: BBox | None = None
    ) -> SearchResult:
        """Top-k indexed images like `image` (optionally only of class `label`, and only tiles
        whose footprint intersects `bbox`: a filtered index search over the area's ids), the
        query first moved by relevance feedback when there is some."""
        k, label, feedback = options.k, options.label, options.feedback
        model, store, batcher = self._ready_search()
        tensor = await anyio.to_thread.run_sync(model.transform, image)
        filtered = label is not None or bbox is not None or bool(feedback)
        vector, scores, ids = await batcher.run((tensor, 0 if filtered else k))
        if feedback:
            vector = await anyio.to_thread.run_sync(self._moved, store, vector, feedback)
        if bbox is not None:
            hits = await anyio.to_thread.run_sync(area_search, store, vector[None], k, label, bbox)
        elif label is not None or feedback:
            hits = await anyio.to_thread.run_sync(ranked_hits, store, vector, k, label)
        else:
            hits = await anyio.to_thread.run_sync(hits_for, self.engine, scores[:k], ids[:k])
        return SearchResult(hits, store.fingerprint)

    async def similar(self, image_id: int, options: SearchOptions) -> SearchResult:
        """Top-k images like an indexed one (itself left out), from its stored descriptor,
        moved by relevance feedback when there is some."""
        _, store, _ = self._ready_search()
        vector = await anyio.to_thread.run_sync(self._stored_vector, image_id)
        if vector is None:  # the index type cannot reconstruct: embed the file again
            image = await anyio.to_thread.run_sync(self._indexed_image, image_id)
            model, _, batcher = self._ready_search()
            tensor = await anyio.to_thread.run_sync(model.transform, image)
            vector, _, _ = await batcher.run((tensor, 0))
        if options.feedback:
            vector = await anyio.to_thread.run_sync(self._moved, store, vector, options.feedback)
        hits = await anyio.to_thread.run_sync(
            ranked_hits, store, vector, options.k, options.label, image_id
        )
        return SearchResult(hits, store.fingerprint)

    @staticmethod
    def _moved(store: VectorIndex, vector: np.ndarray, feedback: Feedback) -> np.ndarray:
        """The query moved by feedback; an unknown marked id is a 404 naming it."""
        try:
            return apply_feedback(store, vector, feedback)
        except UnknownFeedbackIdError as exc:
            raise NotFoundError(str(exc)) from None
        except ValueError as exc:
            raise ServiceError(str(exc), 422) from None

    def image_row(self, image_id: int) -> ImageRow:
        """The DB row of an indexed image, or 404."""
        with make_sessionmaker(self.engine)() as session:
            row = session.get(ImageRow, image_id)
        if row is None:
            raise NotFoundError(f"no image with id {image_id}")
        return row

    def _stored_vector(self, image_id: int) -> np.ndarray | None:
        self.image_row(image_id)
        _, store, _ = self._ready_search()
        return store.reconstruct(image_id)

    def _indexed_image(self, image_id: int) -> Image.Image:
        row = self.image_row(image_id)
        return decode_image(self.sources.read(row.source, row.path), self.settings.max_pixels)

    async def explain(self, image: Image.Image) -> bytes:
        """Grad-CAM heat-map of the embedder over the query, as a PNG."""
        if self.model is None:
            raise self._not_loaded()
        model = self.model

        def work() -> bytes:
            batch = model.transform(image)[None].to(model.device)
            cam = embedder_cam(model.net, batch)[0]
            return overlay_png(image, cam)

        return await anyio.to_thread.run_sync(work)

    # ------------------------------------------------------------------ removal
    def remove_images(self, image_ids: list[int]) -> int:
        """Delete images from index and DB together (`indexer.removal`, as `rsir remove`
        does), refusing an index of another model; 404 if an id is unknown, 409 while an index
        run writes. Then serve the new version."""
        if self.checkpoint is None:
            raise self._not_loaded()
        try:
            removal = remove_images(
                Path(self.settings.index_dir),
                self.engine,
                image_ids,
                fingerprint=self.fingerprint,
                require_known=True,
                **self._engine_options(),
            )
        except UnknownImageError as exc:
            raise NotFoundError(str(exc)) from None
        except ModelMismatchError as exc:
            raise ModelMismatchServiceError(self._public(str(exc))) from None
        except IndexBusyError as exc:
            raise ServiceError(self._public(f"{exc}; retry when it ends"), 409) from None
        self.refresh_index()
        return removal.removed
