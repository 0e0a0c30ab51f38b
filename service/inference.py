"""The inference core: models, index and batchers, loaded once and shared by all requests.

It runs inside the API process by default, or inside `rsir worker` (the GPU process of a
deployment) behind its internal HTTP API; either way, queries reach the network only through a
`Batcher`, which puts concurrent queries into one forward pass.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from indexer.search import Hit, area_search, hits_for, ranked_hits
from indexer.store import ModelMismatchError
from model.checkpoint import Checkpoint
from model.device import best_device
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


class Classifier(Protocol):
    """What the service needs of a loaded classifier (model/classifiers/inference.py)."""

    name: str
    method: str
    dataset: str
    class_names: list[str]
    fingerprint: str
    init: str

    def predict(self, images: list[Image.Image]) -> list[list[float]]: ...

    def explain(self, image: Image.Image) -> bytes | None: ...


@dataclass
class ModelInfo:
    """One loaded model, as `GET /models` lists it."""

    name: str
    kind: str
    dataset: str
    classes: list[str]
    fingerprint: str
    init: str
    method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """Ranked hits and the model that ranked them."""

    hits: list[Hit]
    model_fingerprint: str


@dataclass
class Prediction:
    label: str
    probability: float


@dataclass
class ClassifyResult:
    """Top-k classes of one image; `explanation_png` when asked for and the model has one."""

    model: str
    predictions: list[Prediction]
    explanation_png: bytes | None = None


def _load_classifier(path: Path, device: torch.device) -> Classifier:
    """Load a classifier checkpoint through the classifiers package (imported lazily)."""
    from model.classifiers.inference import load_classifier

    return load_classifier(path, device)


class InferenceCore:
    """Loaded resources and the batched operations on them. `load()` once, `close()` at exit."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.device = best_device(settings.device)
        self.model: EmbeddingModel | None = None  # with the index's whitening, once it is open
        self._raw_model: EmbeddingModel | None = None
        self.checkpoint: Checkpoint | None = None
        self.embedder_name: str | None = None
        self.checkpoint_path: Path | None = None
        self.store: VectorIndex | None = None
        self.classifiers: dict[str, Classifier] = {}
        self.problems: list[str] = []
        self.search_batcher: Batcher[SearchItem, SearchOut] | None = None
        self.classify_batchers: dict[str, Batcher[Image.Image, list[float]]] = {}
        self._index_error: ServiceError | None = None
        self._reload_lock = threading.Lock()
        self.sources = SourceCache(settings.max_pixels)

    # ------------------------------------------------------------------ life cycle
    def load(self) -> None:
        """Load embedder, index and classifiers; what fails is recorded, not raised (see ready)."""
        self._load_embedder()
        self._load_index()
        for path in self.settings.classifier_checkpoints:
            try:
                classifier = _load_classifier(Path(path), self.device)
            except Exception as exc:
                log.exception("cannot load classifier %s", path)
                self.problems.append(self._public(f"classifier {path}: {exc}", path))
                continue
            self.classifiers[classifier.name] = classifier
            batcher: Batcher[Image.Image, list[float]] = Batcher(
                classifier.predict,
                self.settings.batch_max_size,
                self.settings.batch_max_wait_ms,
                name=f"classify:{classifier.name}",
                on_batch=self.metrics.batch_observer(f"classify:{classifier.name}"),
            )
            batcher.start()
            self.metrics.track_queue(batcher.name, lambda b=batcher: b.depth)  # type: ignore[misc]
            self.classify_batchers[classifier.name] = batcher
        self.metrics.index_size.set_function(lambda: float(self.store.ntotal if self.store else 0))

    def _load_embedder(self) -> None:
        path = self.settings.checkpoint
        if path is None:  # the checkpoint that `rsir index` recorded beside the index
            recorded = read_model_file(Path(self.settings.index_dir))
            path = Path(recorded["checkpoint"]) if recorded else None
        if path is None:
            self.problems.append(
                self._public(
                    "no embedder checkpoint configured (RSIR_CHECKPOINT) and none recorded in "
                    f"{self.settings.index_dir}"
                )
            )
            return
        try:
            model, ckpt = load_embedding_model(
                Path(path), self.settings.device, self.settings.runtime
            )
        except Exception as exc:
            log.exception("cannot load embedder %s", path)
            self.problems.append(self._public(f"embedder {path}: {exc}", path))
            return
        self.model = self._raw_model = model
        self.checkpoint = ckpt
        self.checkpoint_path = Path(path).resolve()
        self.embedder_name = Path(path).stem
        self.search_batcher = Batcher(
            self._search_batch,
            self.settings.batch_max_size,
            self.settings.batch_max_wait_ms,
            name="search",
            on_batch=self.metrics.batch_observer("search"),
        )
        self.search_batcher.start()
        batcher = self.search_batcher
        self.metrics.track_queue("search", lambda: batcher.depth)
        log.info(
            "embedder %s (%s) on %s, runtime %s",
            self.embedder_name,
            ckpt.fingerprint,
            self.device,
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
            self.store = open_index(
                self.settings.index_dir,
                self.engine,
                fingerprint=descriptor_fingerprint(self.checkpoint.fingerprint, whitening),
                dim=model.dim,
                **self._engine_options(),
            )
            self.model = model
        except (ModelMismatchError, WhiteningMismatchError) as exc:
            self._index_error = ModelMismatchServiceError(self._public(str(exc)))
            self.problems.append(self._index_error.detail)
            log.error("%s", exc)
            return
        except Exception as exc:
            log.exception("cannot open the index in %s", self.settings.index_dir)
            self._index_error = NotReadyError(
                self._public(f"index in {self.settings.index_dir}: {exc}")
            )
            self.problems.append(self._index_error.detail)
            return
        if self._index_error is not None:  # loaded on a retry: the old reason is gone
            self.problems = [p for p in self.problems if p != self._index_error.detail]
            self._index_error = None
        log.info(
            "index %s: %d %d-d vectors of model %s (v%d)",
            self.store.index_dir,
            self.store.ntotal,
            model.dim,
            self.store.fingerprint,
            self.store.version,
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

    def _whitening_identity(self) -> dict[str, Any] | None:
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

    def close(self) -> None:
        """Stop the batchers (finishing queued requests)."""
        if self.search_batcher is not None:
            self.search_batcher.stop()
        for batcher in self.classify_batchers.values():
            batcher.stop()

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

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Readiness of each component, for /ready."""
        return {
            "embedder": self.checkpoint.fingerprint if self.checkpoint else None,
            "index": (
                {
                    "ntotal": self.store.ntotal,
                    "version": self.store.version,
                    "fingerprint": self.store.fingerprint,
                    "whitening": self._whitening_identity(),
                }
                if self.store is not None
                else None
            ),
            "classifiers": sorted(self.classifiers),
            "device": str(self.device),
            "problems": list(self.problems),
            "ready": self.model is not None and self.store is not None,
        }

    def models(self) -> list[ModelInfo]:
        """The embedder and the classifiers, with what each was trained on."""
        out: list[ModelInfo] = []
        if self.checkpoint is not None and self.embedder_name is not None:
            ckpt = self.checkpoint
            out.append(
                ModelInfo(
                    name=self.embedder_name,
                    kind="embedder",
                    dataset=ckpt.dataset,
                    classes=list(ckpt.class_names),
                    fingerprint=ckpt.fingerprint,
                    init=ckpt.init,
                    extra={
                        "config": ckpt.config,
                        "image_size": ckpt.preprocessing.image_size,
                        "whitening": self._whitening_identity(),
                    },
                )
            )
        for name, clf in sorted(self.classifiers.items()):
            out.append(
                ModelInfo(
                    name=name,
                    kind="classifier",
                    dataset=clf.dataset,
                    classes=list(clf.class_names),
                    fingerprint=clf.fingerprint,
                    init=clf.init,
                    method=clf.method,
                )
            )
        return out

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
    def _ready_search(self) -> tuple[EmbeddingModel, VectorIndex, Batcher[Any, Any]]:
        if self.model is None or self.search_batcher is None:
            raise NotReadyError("no embedder loaded: " + "; ".join(self.problems))
        if self.store is None:
            raise self._index_error or NotReadyError("no index loaded")
        return self.model, self.store, self.search_batcher

    def _search_batch(self, items: list[SearchItem]) -> list[SearchOut]:
        """One forward pass and one FAISS search for a whole batch of queries."""
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
        self,
        image: Image.Image,
        k: int,
        label: str | None,
        bbox: BBox | None = None,
        feedback: Feedback | None = None,
    ) -> SearchResult:
        """Top-k indexed images like `image` (optionally only of class `label`, and only tiles
        whose footprint intersects `bbox`: a filtered FAISS search over the area's ids), the
        query first moved by relevance `feedback` when there is some."""
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

    async def similar(
        self, image_id: int, k: int, label: str | None, feedback: Feedback | None = None
    ) -> SearchResult:
        """Top-k images like an indexed one (itself left out), from its stored descriptor,
        moved by relevance `feedback` when there is some."""
        _, store, _ = self._ready_search()
        vector = await anyio.to_thread.run_sync(self._stored_vector, image_id)
        if vector is None:  # the index type cannot reconstruct: embed the file again
            image = await anyio.to_thread.run_sync(self._indexed_image, image_id)
            model, _, batcher = self._ready_search()
            tensor = await anyio.to_thread.run_sync(model.transform, image)
            vector, _, _ = await batcher.run((tensor, 0))
        if feedback:
            vector = await anyio.to_thread.run_sync(self._moved, store, vector, feedback)
        hits = await anyio.to_thread.run_sync(ranked_hits, store, vector, k, label, image_id)
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

    def remove_images(self, image_ids: list[int]) -> int:
        """Delete images from index and DB together (a new index version); 404 if unknown."""
        if self.checkpoint is None:
            raise NotReadyError("no embedder loaded: " + "; ".join(self.problems))
        for image_id in image_ids:
            self.image_row(image_id)
        try:
            writer = open_index(
                self.settings.index_dir,
                self.engine,
                fingerprint=self.fingerprint,
                writable=True,
                **self._engine_options(),
            )
        except ModelMismatchError as exc:
            raise ModelMismatchServiceError(self._public(str(exc))) from None
        except RuntimeError as exc:  # the writer lock: an index run is in progress
            raise ServiceError(self._public(f"{exc}; retry when it ends"), 409) from None
        with writer:
            removed = writer.remove(image_ids)
        self.refresh_index()
        return removed

    def _stored_vector(self, image_id: int) -> np.ndarray | None:
        self.image_row(image_id)
        _, store, _ = self._ready_search()
        return store.reconstruct(image_id)

    def _indexed_image(self, image_id: int) -> Image.Image:
        row = self.image_row(image_id)
        return decode_image(self.sources.read(row.source, row.path), self.settings.max_pixels)

    # ------------------------------------------------------------------ explain, classify
    async def explain(self, image: Image.Image) -> bytes:
        """Grad-CAM heat-map of the embedder over the query, as a PNG."""
        if self.model is None:
            raise NotReadyError("no embedder loaded: " + "; ".join(self.problems))
        model = self.model

        def work() -> bytes:
            batch = model.transform(image)[None].to(model.device)
            cam = embedder_cam(model.net, batch)[0]
            return overlay_png(image, cam)

        return await anyio.to_thread.run_sync(work)

    def _classifier(self, name: str | None) -> tuple[str, Classifier]:
        if not self.classifiers:
            raise UnknownModelError(
                "no classifier is loaded (set RSIR_CLASSIFIER_CHECKPOINTS)"
                + (f"; problems: {'; '.join(self.problems)}" if self.problems else "")
            )
        if name is None or name == "":
            name = sorted(self.classifiers)[0]
        if name not in self.classifiers:
            raise UnknownModelError(
                f"unknown classifier {name!r}; loaded: {sorted(self.classifiers)}"
            )
        return name, self.classifiers[name]

    async def classify(
        self, image: Image.Image, model: str | None, top_k: int, explain: bool
    ) -> ClassifyResult:
        """Top-k class probabilities from one classifier (default: the first by name)."""
        name, clf = self._classifier(model)
        probabilities = await self.classify_batchers[name].run(image)
        order = np.argsort(-np.asarray(probabilities))[: max(1, top_k)]
        predictions = [Prediction(clf.class_names[i], float(probabilities[i])) for i in order]
        png = await anyio.to_thread.run_sync(clf.explain, image) if explain else None
        return ClassifyResult(name, predictions, png)
