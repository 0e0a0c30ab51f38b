"""What a classifier method is (one registration) and the one training loop they all share.

A method registers its network builders, its paper recipe, its batch order (sampler) and its
trainer; its explanation is the deployed network's `explain`. Nothing else in rsir branches on
a method's name: training, evaluation, inference and the CLI go through `ClassifierMethod`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from model.classifiers.base import Batch, Recipe, SceneClassifier, apply_dihedral, random_dihedral
from model.classifiers.data import ImageBank, Sampler, shuffled_batches
from model.transforms import Preprocessing

if TYPE_CHECKING:  # training.py, which imports this module, defines it
    from model.classifiers.training import TrainConfig

log = logging.getLogger(__name__)

Builder = Callable[[dict[str, Any], bool, Path | None], tuple[SceneClassifier, str]]


@dataclass
class TrainRun:
    """What a method's trainer gets: the run's config, the model config, the decoded images,
    the readable training positions, and what the config resolves to here (the method's
    recipe, the device, the preprocessing, the method's batch order)."""

    config: TrainConfig
    model_config: dict[str, Any]
    bank: ImageBank
    train: list[int]
    recipe: Recipe
    device: torch.device
    preprocessing: Preprocessing
    sampler: Sampler = shuffled_batches

    def fit(
        self,
        net: SceneClassifier,
        description: str,
        *,
        recipe: Recipe | None = None,
        epochs: int | None = None,
        seed: int | None = None,
    ) -> list[dict[str, Any]]:
        """`fit` with this run's data and settings (any of recipe, epochs, seed replaced)."""
        config = self.config
        net.freeze_stages(config.freeze_stages)
        return fit(
            net,
            self.bank,
            self.train,
            recipe or self.recipe,
            config.epochs if epochs is None else epochs,
            config.batch_size,
            config.seed if seed is None else seed,
            self.device,
            self.preprocessing,
            sampler=self.sampler,
            progress=config.progress,
            description=description,
        )


History = list[dict[str, Any]]
Trainer = Callable[["ClassifierMethod", TrainRun], tuple[SceneClassifier, str, History]]


def train_single_network(
    method: ClassifierMethod, run: TrainRun
) -> tuple[SceneClassifier, str, list[dict[str, Any]]]:
    """The usual trainer: build the method's network, fit it once."""
    torch.manual_seed(run.config.seed)
    net, init = method.build(run.model_config, run.config.pretrained, run.config.weights_path)
    history = run.fit(net, f"{method.name} ({run.model_config['backbone']})")
    return net, init, history


@dataclass(frozen=True)
class ClassifierMethod:
    """One classifier method.

    build: its training network from a config (and its initialisation string).
    build_deployed: the network its checkpoint holds, random weights (to be loaded).
    recipe: its paper's optimiser recipe for a batch size.
    sampler: its batch order (LAFE pairs same-label images).
    trainer: how it is trained (DDRL-AM trains an attention network first).
    export_refusal: why its network cannot become an inference graph (ONNX, OpenVINO); None
    when it can.
    """

    name: str
    description: str
    build: Builder
    build_deployed: Callable[[dict[str, Any]], SceneClassifier]
    recipe: Callable[[int], Recipe]
    sampler: Sampler = shuffled_batches
    trainer: Trainer = field(default=train_single_network)
    export_refusal: str | None = None

    def train(self, run: TrainRun) -> tuple[SceneClassifier, str, list[dict[str, Any]]]:
        """Train this method: (network in eval mode, initialisation, per-epoch history)."""
        net, init, history = self.trainer(self, run)
        net.eval()
        return net, init, history


def optimizer_for(net: SceneClassifier, recipe: Recipe) -> tuple[torch.optim.Optimizer, list[bool]]:
    """The recipe's optimiser over the method's trainable parameter groups, and which groups
    the schedule applies to."""
    groups = []
    for group in net.param_groups():
        trainable = [p for p in group.params if p.requires_grad]
        if trainable:
            groups.append((trainable, group))
    params = [
        {"params": ps, "lr": recipe.lr * g.lr_scale, "weight_decay": recipe.weight_decay}
        for ps, g in groups
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
    return optimizer, [g.scheduled for _, g in groups]


def schedule_factor(recipe: Recipe, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier of a scheduled group at the start of `epoch` (0-based)."""
    if recipe.schedule == "step":
        return float(recipe.step_gamma ** (epoch // max(recipe.step_epochs, 1)))
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if recipe.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {recipe.schedule!r}; use 'step', 'cosine' or 'constant'")


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
    sampler: Sampler = shuffled_batches,
    progress: bool = True,
    description: str = "train",
) -> list[dict[str, Any]]:
    """Train `net` in place on the bank images at `train_indices`; per-epoch history.

    Unreadable images (see `ImageBank`) are left out here as well, whoever calls.
    """
    train_indices = bank.usable(train_indices)
    net.to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:  # pixels live on the GPU; convolutions in bf16 (no loss scaling needed)
        bank = bank.to(device)
    optimizer, scheduled = optimizer_for(net, recipe)
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
            for positions in sampler(labels, batch_size, generator):
                chosen = [train_indices[i] for i in positions]
                index = torch.as_tensor(chosen, dtype=torch.long)
                dihedral = random_dihedral(len(chosen), generator)
                images = bank.normalized(index, preprocessing)
                images = torch.stack(
                    [apply_dihedral(img, d) for img, d in zip(images, dihedral, strict=True)]
                )
                labels_here = bank.labels[index.to(bank.labels.device)].to(device)
                batch = Batch(images.to(device), labels_here, index, dihedral)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
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
