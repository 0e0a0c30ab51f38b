"""Train any classifier method on a dataset split: one loop, method-specific losses.

`train_classifier` takes labelled images and a `TrainConfig`, makes the seeded stratified split,
decodes the images once, trains (DDRL-AM first fine-tunes its attention ResNet-18 and caches its
Grad-CAM maps) and returns the network and a `kind="classifier"` checkpoint that rebuilds it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torchvision import models
from tqdm import tqdm

from model.checkpoint import Checkpoint, fingerprint, save_checkpoint
from model.classifiers.base import Batch, Recipe, SceneClassifier, apply_dihedral, random_dihedral
from model.classifiers.data import ImageBank, load_image_bank, paired_batches, shuffled_batches
from model.classifiers.registry import build_classifier, classifier_config, get_method
from model.datasets import LabeledImages, Split, save_split, stratified_split
from model.device import best_device
from model.transforms import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that decides a trained classifier (stored in its checkpoint).

    `recipe` None takes the method's paper recipe; `attention_epochs` is DDRL-AM's step 1
    (default: `epochs`); `options` are method settings (gamma, alpha, beta, center_weight...).
    `per_class` and `classes` record the subset the images were cut to, for re-evaluation.
    """

    method: str = "plain"
    backbone: str | None = None
    image_size: int = 224
    epochs: int = 40
    batch_size: int = 32
    seed: int = 0
    train_ratio: float = 0.8
    recipe: Recipe | None = None
    attention_epochs: int | None = None
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

    def resolved_recipe(self) -> Recipe:
        """The recipe in force: the given one, else the method's default for this batch size."""
        return self.recipe or get_method(self.method).recipe(self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipe"] = self.resolved_recipe().to_dict()
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


def _optimizer(net: SceneClassifier, recipe: Recipe) -> tuple[torch.optim.Optimizer, list[bool]]:
    groups = [g for g in net.param_groups() if g.params]
    params = [
        {"params": g.params, "lr": recipe.lr * g.lr_scale, "weight_decay": recipe.weight_decay}
        for g in groups
    ]
    optimizer: torch.optim.Optimizer
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum)
    elif recipe.optimizer == "adam-amsgrad":
        optimizer = torch.optim.Adam(
            params, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, amsgrad=True
        )
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}; use 'sgd' or 'adam-amsgrad'")
    return optimizer, [g.scheduled for g in groups]


def schedule_factor(recipe: Recipe, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier of a scheduled group at the start of `epoch` (0-based)."""
    if recipe.schedule == "step":
        return float(recipe.step_gamma ** (epoch // max(recipe.step_epochs, 1)))
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if recipe.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {recipe.schedule!r}; use 'step', 'cosine' or 'constant'")


def _batches(
    positions: list[int],
    labels: list[int],
    batch_size: int,
    paired: bool,
    generator: torch.Generator,
) -> Iterator[list[int]]:
    if paired:
        for batch in paired_batches(labels, batch_size, generator):
            yield [positions[i] for i in batch]
    else:
        for batch in shuffled_batches(len(positions), batch_size, generator):
            yield [positions[i] for i in batch]


def fit(
    net: SceneClassifier,
    bank: ImageBank,
    train_indices: list[int],
    recipe: Recipe,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    preprocessing: Preprocessing,
    paired: bool = False,
    progress: bool = True,
    description: str = "train",
) -> list[dict[str, Any]]:
    """Train `net` in place on the bank images at `train_indices`; per-epoch history."""
    net.to(device)
    optimizer, scheduled = _optimizer(net, recipe)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    generator = torch.Generator().manual_seed(seed)
    labels = [int(bank.labels[i]) for i in train_indices]
    history: list[dict[str, Any]] = []
    steps_per_epoch = math.ceil(len(train_indices) / max(batch_size, 1))
    bar = tqdm(
        total=epochs * steps_per_epoch,
        desc=description,
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    try:
        for epoch in range(epochs):
            factor = schedule_factor(recipe, epoch, epochs)
            for group, base, sched in zip(optimizer.param_groups, base_lrs, scheduled, strict=True):
                group["lr"] = base * factor if sched else base
            net.train()
            seen, correct, loss_sum = 0, 0, 0.0
            terms_sum: dict[str, float] = {}
            for chosen in _batches(train_indices, labels, batch_size, paired, generator):
                index = torch.as_tensor(chosen, dtype=torch.long)
                dihedral = random_dihedral(len(chosen), generator)
                images = bank.normalized(index, preprocessing)
                images = torch.stack(
                    [apply_dihedral(img, d) for img, d in zip(images, dihedral, strict=True)]
                )
                batch = Batch(images.to(device), bank.labels[index].to(device), index, dihedral)
                out = net.training_step(batch)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                net.after_backward()
                optimizer.step()
                net.after_step()
                n = len(chosen)
                seen += n
                loss_sum += float(out.loss.detach()) * n
                correct += int((out.logits.detach().argmax(1) == batch.labels).sum())
                for key, value in out.terms.items():
                    terms_sum[key] = terms_sum.get(key, 0.0) + value * n
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(out.loss.detach()):.3f}")
            record = {
                "epoch": epoch + 1,
                "loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "lr": [group["lr"] for group in optimizer.param_groups],
                **{k: v / max(seen, 1) for k, v in terms_sum.items()},
            }
            history.append(record)
            log.info(
                "%s epoch %d: loss %.4f, train accuracy %.3f",
                description,
                epoch + 1,
                record["loss"],
                record["train_accuracy"],
            )
    finally:
        bar.close()
    net.eval()
    return history


def _train_ddrl_am(
    config: TrainConfig,
    model_config: dict[str, Any],
    bank: ImageBank,
    split: Split,
    device: torch.device,
    prep: Preprocessing,
) -> tuple[SceneClassifier, str, list[dict[str, Any]]]:
    """Step 1: fine-tune the attention ResNet-18 and cache its ground-truth-class maps;
    step 2: train the two-stream network on images and maps."""
    from model.classifiers.ddrl_am import GradCamCache, build_ddrl_am

    recipe = config.resolved_recipe()
    attention_config = classifier_config(
        "plain", model_config["num_classes"], config.image_size, model_config["backbone"]
    )
    torch.manual_seed(config.seed)
    attention, init = build_classifier(attention_config, config.pretrained, config.weights_path)
    step1_recipe = Recipe(
        "adam-amsgrad",
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        schedule=recipe.schedule,
        step_epochs=recipe.step_epochs,
        step_gamma=recipe.step_gamma,
    )
    epochs1 = config.attention_epochs if config.attention_epochs is not None else config.epochs
    history = fit(
        attention,
        bank,
        split.train,
        step1_recipe,
        epochs1,
        config.batch_size,
        config.seed,
        device,
        prep,
        progress=config.progress,
        description="ddrl-am step 1 (attention net)",
    )
    for record in history:
        record["stage"] = "attention"
    attention_net = cast(models.ResNet, attention.net)
    net, _ = build_ddrl_am(model_config, attention_net=attention_net)
    net.map_cache = GradCamCache(
        config.cache_dir,
        fingerprint({k: v.cpu() for k, v in attention_net.state_dict().items()}, prep),
    )
    net.to(device).eval()
    maps = torch.zeros(len(bank), bank.image_size, bank.image_size)
    for start in range(0, len(split.train), 64):
        chosen = split.train[start : start + 64]
        images = bank.normalized(chosen, prep).to(device)
        maps[chosen] = net.cached_maps(
            images, [bank.hashes[i] for i in chosen], bank.labels[chosen].to(device)
        ).cpu()
    net.training_maps = maps
    history2 = fit(
        net,
        bank,
        split.train,
        recipe,
        config.epochs,
        config.batch_size,
        config.seed + 1,
        device,
        prep,
        progress=config.progress,
        description="ddrl-am step 2 (two streams)",
    )
    net.training_maps = None
    return net, init, history + history2


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
    info = get_method(config.method)
    device = best_device(config.device)
    prep = Preprocessing(config.image_size)
    split = split or stratified_split(images.labels, config.train_ratio, config.seed)
    if bank is None:
        bank = load_image_bank(images.paths, images.labels, config.image_size, config.num_workers)
    if len(bank) != len(images) or bank.image_size != config.image_size:
        raise ValueError("the image bank does not match the images or the image size")
    model_config = classifier_config(
        config.method,
        len(images.class_names),
        config.image_size,
        config.backbone,
        **config.options,
    )
    if config.method == "ddrl-am":
        net, init, history = _train_ddrl_am(config, model_config, bank, split, device, prep)
    else:
        torch.manual_seed(config.seed)
        net, init = build_classifier(model_config, config.pretrained, config.weights_path)
        history = fit(
            net,
            bank,
            split.train,
            config.resolved_recipe(),
            config.epochs,
            config.batch_size,
            config.seed,
            device,
            prep,
            paired=info.name == "lafe",
            progress=config.progress,
            description=f"{config.method} ({model_config['backbone']})",
        )
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
            "name": config.name or f"{config.method}-{model_config['backbone']}-{images.name}",
            "train": config.to_dict(),
            "split": {
                "seed": split.seed,
                "train_fraction": split.train_fraction,
                "n_train": len(split.train),
                "n_test": len(split.test),
            },
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
