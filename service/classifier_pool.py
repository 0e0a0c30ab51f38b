"""The classifier pool: the scene classifiers the service serves, each behind its own batcher.

Classifiers are independent of the search engine (no index, no embedder), so a broken
classifier checkpoint costs only that classifier; the others and search keep serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio.to_thread
import numpy as np
import torch
from PIL import Image

from rsir_common.settings import Settings
from service.batcher import Batcher
from service.errors import UnknownModelError
from service.metrics import Metrics
from service.security import public_problem

log = logging.getLogger(__name__)


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


class ClassifierPool:
    """The configured classifier checkpoints, loaded. `load()` once, `close()` at exit."""

    def __init__(self, settings: Settings, metrics: Metrics, device: torch.device) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = device
        self.loaded: dict[str, Classifier] = {}
        self.problems: list[str] = []
        self._batchers: dict[str, Batcher[Image.Image, list[float]]] = {}

    def load(self) -> None:
        """Load every configured checkpoint; one that fails is recorded in `problems`."""
        for path in self.settings.classifier_checkpoints:
            try:
                classifier = _load_classifier(Path(path), self.device)
            except Exception as exc:
                log.exception("cannot load classifier %s", path)
                self.problems.append(self._public(f"classifier {path}: {exc}", path))
                continue
            self.loaded[classifier.name] = classifier
            batcher: Batcher[Image.Image, list[float]] = Batcher(
                classifier.predict,
                self.settings.batch_max_size,
                self.settings.batch_max_wait_ms,
                name=f"classify:{classifier.name}",
                on_batch=self.metrics.batch_observer(f"classify:{classifier.name}"),
            )
            batcher.start()
            self.metrics.track_queue(batcher.name, lambda b=batcher: b.depth)  # type: ignore[misc]
            self._batchers[classifier.name] = batcher

    def close(self) -> None:
        """Stop the batchers (finishing queued requests)."""
        for batcher in self._batchers.values():
            batcher.stop()

    @property
    def names(self) -> list[str]:
        """The loaded classifiers' names, sorted (the first is the default)."""
        return sorted(self.loaded)

    def _public(self, problem: str, path: Path | str) -> str:
        """`problem` as clients see it: the checkpoint and the index folder by their public
        paths (service/security.py), one line; the log has it whole."""
        paths = [path, self.settings.index_dir]
        return public_problem(problem, Path(self.settings.data_root), paths)

    def _classifier(self, name: str | None) -> tuple[str, Classifier]:
        if not self.loaded:
            raise UnknownModelError(
                "no classifier is loaded (set RSIR_CLASSIFIER_CHECKPOINTS)"
                + (f"; problems: {'; '.join(self.problems)}" if self.problems else "")
            )
        if name is None or name == "":
            name = self.names[0]
        if name not in self.loaded:
            raise UnknownModelError(f"unknown classifier {name!r}; loaded: {self.names}")
        return name, self.loaded[name]

    async def classify(
        self, image: Image.Image, model: str | None, top_k: int, explain: bool
    ) -> ClassifyResult:
        """Top-k class probabilities from one classifier (default: the first by name)."""
        name, clf = self._classifier(model)
        probabilities = await self._batchers[name].run(image)
        order = np.argsort(-np.asarray(probabilities))[: max(1, top_k)]
        predictions = [Prediction(clf.class_names[i], float(probabilities[i])) for i in order]
        png = await anyio.to_thread.run_sync(clf.explain, image) if explain else None
        return ClassifyResult(name, predictions, png)
