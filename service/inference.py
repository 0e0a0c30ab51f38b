"""What a worker serves: the search engine and the classifier pool, loaded and closed together.

It runs inside the API process by default, or inside `rsir worker` (the GPU process of a
deployment) behind its internal HTTP API. The two parts are independent
(service/search_engine.py, service/classifier_pool.py); this only gives the worker one thing
to load and stop, and answers what spans both: `/status` and `/models`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine

from model.device import best_device
from rsir_common.settings import Settings
from service.classifier_pool import ClassifierPool
from service.metrics import Metrics
from service.search_engine import SearchEngine


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


class InferenceCore:
    """The search engine (`retrieval`) and the classifier pool (`classifiers`) of one worker."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.device = best_device(settings.device)
        self.retrieval = SearchEngine(settings, engine, metrics)
        self.classifiers = ClassifierPool(settings, metrics, self.device)

    def load(self) -> None:
        """Load embedder, index and classifiers; what fails is recorded, not raised (`problems`)."""
        self.retrieval.load()
        self.classifiers.load()

    def close(self) -> None:
        """Stop every batcher (finishing queued requests)."""
        self.retrieval.close()
        self.classifiers.close()

    @property
    def problems(self) -> list[str]:
        """Why a part does not serve, as clients may see it: search first, then classifiers."""
        return self.retrieval.problems + self.classifiers.problems

    def status(self) -> dict[str, Any]:
        """Readiness of each component, for /ready."""
        checkpoint = self.retrieval.checkpoint
        return {
            "embedder": checkpoint.fingerprint if checkpoint else None,
            "index": self.retrieval.index_status(),
            "classifiers": self.classifiers.names,
            "device": str(self.device),
            "problems": self.problems,
            "ready": self.retrieval.ready,
        }

    def models(self) -> list[ModelInfo]:
        """The embedder and the classifiers, with what each was trained on."""
        out: list[ModelInfo] = []
        ckpt, name = self.retrieval.checkpoint, self.retrieval.embedder_name
        if ckpt is not None and name is not None:
            out.append(
                ModelInfo(
                    name=name,
                    kind="embedder",
                    dataset=ckpt.dataset,
                    classes=list(ckpt.class_names),
                    fingerprint=ckpt.fingerprint,
                    init=ckpt.init,
                    extra={
                        "config": ckpt.config,
                        "image_size": ckpt.preprocessing.image_size,
                        "whitening": self.retrieval.whitening_identity(),
                    },
                )
            )
        for clf_name in self.classifiers.names:
            clf = self.classifiers.loaded[clf_name]
            out.append(
                ModelInfo(
                    name=clf_name,
                    kind="classifier",
                    dataset=clf.dataset,
                    classes=list(clf.class_names),
                    fingerprint=clf.fingerprint,
                    init=clf.init,
                    method=clf.method,
                )
            )
        return out
