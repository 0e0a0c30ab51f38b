"""Train any classifier method on a dataset split.

`train_classifier` takes labelled images and a `TrainConfig`, makes the seeded stratified split,
decodes the images once (unreadable ones are skipped and counted), hands the run to the
method's registered trainer and returns the network and a `kind="classifier"` checkpoint that
rebuilds it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from model.backbones import default_backbone, get_backbone
from model.checkpoint import Checkpoint, fingerprint, save_checkpoint
from model.classifiers.base import Recipe, SceneClassifier
from model.classifiers.data import ImageBank, load_image_bank
from model.classifiers.method import TrainRun
from model.classifiers.registry import classifier_config, get_method
from model.datasets import LabeledImages, Split, save_split, stratified_split
from model.device import best_device
from model.transforms import Preprocessing
from rsir_common.settings import FromSettings, Settings

log = logging.getLogger(__name__)


@dataclass
class TrainConfig(FromSettings):
    """Everything that decides a trained classifier (stored in its checkpoint).

    `backbone` None takes `model.backbones.default_backbone()` (ImageNet weights on every
    install); `image_size` None the backbone's native size; `recipe` None the method's paper
    recipe; `attention_epochs` is DDRL-AM's step 1 (default: `epochs`); `freeze_stages` keeps
    the trunk's first stages fixed; `options` are method settings (gamma, alpha, beta,
    center_weight...). `per_class` and `classes` record the subset the images were cut to, for
    re-evaluation.
    """

    method: str = "plain"
    backbone: str | None = None
    image_size: int | None = None
    epochs: int = 40
    batch_size: int = 32
    seed: int = 0
    train_ratio: float = 0.8
    recipe: Recipe | None = None
    attention_epochs: int | None = None
    freeze_stages: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    per_class: int | None = None
    classes: list[str] | None = None
    pretrained: bool = True
    weights_path: Path | None = None
    device: str = "auto"
    cache_dir: Path | None = None
    num_workers: int = 0
    progress: bool = True
    name: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Self:
        """`rsir train-classifier`'s run: the settings of the fields' names, but the
        classifier's own method, epochs, batch size and learning rate (classifier_*), seed 0
        unless one is set, the classes listed, Grad-CAM maps in the one cache folder."""
        listed = settings.classes
        classes = [c.strip() for c in listed.split(",") if c.strip()] if listed else None
        config = super().from_settings(
            settings,
            **{
                "method": settings.classifier_method,
                "epochs": settings.classifier_max_epochs,
                "batch_size": settings.classifier_batch_size,
                "seed": settings.seed or 0,
                "classes": classes,
                "weights_path": settings.imagenet_weights,
                "cache_dir": gradcam_cache(settings),
                **overrides,
            },
        )
        if settings.classifier_lr is not None:
            config.recipe = replace(config.resolved_recipe(), lr=settings.classifier_lr)
        return config

    def resolved_recipe(self) -> Recipe:
        """The recipe in force: the given one, else the method's default for this batch size."""
        return self.recipe or get_method(self.method).recipe(self.batch_size)

    def resolved_backbone(self) -> str:
        """The backbone in force: the given one, else the default of this install."""
        return self.backbone or default_backbone(self.weights_path)

    def resolved_image_size(self) -> int:
        """The input size in force: the given one, else the backbone's native size."""
        return self.image_size or get_backbone(self.resolved_backbone()).native_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipe"] = self.resolved_recipe().to_dict()
        data["backbone"] = self.resolved_backbone()
        data["image_size"] = self.resolved_image_size()
        for key in ("weights_path", "cache_dir"):
            data[key] = None if data[key] is None else str(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if values.get("recipe") is not None:
            values["recipe"] = Recipe.from_dict(values["recipe"])
        for key in ("weights_path", "cache_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)


def gradcam_cache(settings: Settings) -> Path:
    """DDRL-AM's Grad-CAM maps: a folder of the one cache folder."""
    return settings.resolved_cache_dir() / "gradcam"


@dataclass
class TrainedClassifier:
    """A trained network (eval mode), its checkpoint, and the data it was trained on."""

    net: SceneClassifier
    checkpoint: Checkpoint
    split: Split
    images: LabeledImages
    bank: ImageBank
    history: list[dict[str, Any]]
    seconds: float
    path: Path | None = None


def train_classifier(
    images: LabeledImages,
    config: TrainConfig,
    out: Path | None = None,
    *,
    bank: ImageBank | None = None,
    split: Split | None = None,
) -> TrainedClassifier:
    """Train config.method on the train part of a seeded stratified split of `images`.

    Saves the checkpoint (and the split beside it, `<out>.split.json`) when `out` is given.
    `bank` lets several runs share decoded images (it must hold `images` at config.image_size).
    """
    started = time.perf_counter()
    method = get_method(config.method)
    device = best_device(config.device)
    backbone = config.resolved_backbone()
    image_size = config.resolved_image_size()
    prep = Preprocessing.for_backbone(backbone, image_size)
    split = split or stratified_split(images.labels, config.train_ratio, config.seed)
    if bank is None:
        bank = load_image_bank(images.paths, images.labels, image_size, config.num_workers)
    if len(bank) != len(images) or bank.image_size != image_size:
        raise ValueError("the image bank does not match the images or the image size")
    train = bank.usable(split.train)
    if not train:
        raise ValueError("none of the training images could be read")
    model_config = classifier_config(
        config.method, len(images.class_names), image_size, backbone, **config.options
    )
    recipe = config.resolved_recipe()
    run = TrainRun(config, model_config, bank, train, recipe, device, prep, method.sampler)
    net, init, history = method.train(run)
    net.eval()
    seconds = time.perf_counter() - started
    state = net.deploy_state_dict()
    checkpoint = Checkpoint(
        kind="classifier",
        config=net.deploy_config(),
        preprocessing=prep,
        class_names=list(images.class_names),
        state_dict=state,
        init=init,
        dataset=images.name,
        fingerprint=fingerprint(state, prep),
        extra={
            "name": config.name or f"{config.method}-{backbone}-{images.name}",
            "train": config.to_dict(),
            "split": {
                "seed": split.seed,
                "train_fraction": split.train_fraction,
                "n_train": len(split.train),
                "n_test": len(split.test),
            },
            "unreadable_train_images": len(split.train) - len(train),
            "history": history,
            "train_seconds": seconds,
            "device": str(device),
        },
    )
    trained = TrainedClassifier(net, checkpoint, split, images, bank, history, seconds)
    if out is not None:
        save_checkpoint(checkpoint, out)
        save_split(split, images, out.with_name(out.stem + ".split.json"))
        trained.path = out
        log.info("saved %s (%s, fingerprint %s)", out, config.method, checkpoint.fingerprint)
    return trained
