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

from model.checkpoint import Checkpoint
from model.device import best_device
from rsir_common.settings import Settings
from service.classifier_pool import Classifier, ClassifierPool
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
            extra = {
                "config": ckpt.config,
                "image_size": ckpt.preprocessing.image_size,
                "whitening": self.retrieval.whitening_identity(),
            }
            out.append(_model_info(name, "embedder", ckpt, extra=extra))
        for clf_name, clf in sorted(self.classifiers.loaded.items()):
            out.append(_model_info(clf_name, "classifier", clf, method=clf.method))
        return out


def _model_info(name: str, kind: str, trained: Checkpoint | Classifier, **more: Any) -> ModelInfo:
    """What `GET /models` says of a model: its name and kind, and what it was trained on."""
    return ModelInfo(
        name=name,
        kind=kind,
        dataset=trained.dataset,
        classes=list(trained.class_names),
        fingerprint=trained.fingerprint,
        init=trained.init,
        **more,
    )
