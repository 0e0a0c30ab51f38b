"""Fine-tune the retrieval embedder: an optional classification warm start, then the contrastive
loss with hard negatives of Chen et al. (2021, doi:10.12677/csa.2021.113052) (after Radenovic,
Tolias and Chum, TPAMI 2019, doi:10.1109/TPAMI.2018.2846566).

The recipe, found by measuring on UCM (bench/results/retrieval.md says what each part gave):
an ImageNet-initialised backbone; linear warm-up then cosine decay of the learning rate; flips,
right-angle rotations and a random scale crop, since overhead scenes have no up and are seen at
several resolutions; `ce_epochs` of normalised-softmax classification (the descriptor against
learned class prototypes, Zhai and Wu, BMVC 2019, arXiv:1811.12649), which moves the descriptor
quickly to the classes; then contrastive epochs, where each epoch the current model embeds a
random pool of the train split and every query gets a random positive of its class and the
nearest images of other classes as negatives.

Training resumes from the last finished epoch when a state file of the same hyperparameters is
present; run-time settings (device, decoding workers) may change between runs.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model.backbones import default_backbone
from model.checkpoint import atomic_torch_save, embedder_checkpoint, save_checkpoint
from model.datasets import (
    UNREADABLE,
    LabeledImages,
    load_dataset,
    save_split,
    stratified_split,
)
from model.device import best_device
from model.embedder import Embedder, EmbedderConfig, build_embedder
from model.losses import contrastive_loss
from model.train_inputs import CachedStageInputs, PixelInputs, TrainInputs, stage_maps
from model.transforms import Preprocessing
from rsir_common.settings import FromSettings, Settings

log = logging.getLogger(__name__)

# Fields that do not change what is learned: a run may resume across changes of these.
RUNTIME_FIELDS = frozenset({"num_workers", "device", "feature_cache"})
MINING_CHUNK = 1024  # queries per FAISS search while mining: memory ~ chunk x candidates
MINING_CANDIDATES = 128  # nearest neighbours looked at per query for hard negatives


@dataclass
class TrainConfig(FromSettings):
    """Everything a training run depends on (saved in its state for resuming)."""

    dataset: str
    root: str
    backbone: str | None = None  # None: ResNet-50 with ImageNet weights, else EfficientNet-Lite0
    pooling: str = "gem"
    attention: bool = True
    image_size: int | None = None  # None: the backbone's native size
    batch_size: int = 8  # tuples per step; each tuple is 2 + negatives images
    max_epochs: int = 10  # contrastive epochs
    ce_epochs: int = 0  # classification warm-start epochs before the contrastive ones
    ce_batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 1e-6
    margin: float = 0.7
    negatives: int = 2
    min_scale: float = 0.5  # random crop of at least this fraction of the area; 1: no crop
    freeze_stages: int = 0  # first trunk stages kept at their ImageNet weights (and BN stats)
    feature_cache: str | None = None  # folder keeping the frozen stages' output across runs
    queries_per_epoch: int | None = None  # None: every training image once
    mining_pool: int | None = None  # images embedded for mining each epoch; None: all
    seed: int = 0
    train_fraction: float = 0.8
    per_class: int | None = None  # class-balanced subset, for quick runs
    num_workers: int = 2
    device: str = "auto"
    pretrained: bool = True
    imagenet_weights: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Self:
        """`rsir train`'s run: the settings of the fields' names, but training's own batch
        size (train_batch_size), seed 0 unless one is set, and no stage frozen."""
        weights = settings.imagenet_weights
        return super().from_settings(
            settings,
            **{
                "root": str(settings.data_root),
                "batch_size": settings.train_batch_size,
                "seed": settings.seed or 0,
                "freeze_stages": 0,
                "imagenet_weights": str(weights) if weights else None,
                **overrides,
            },
        )

    def resolved(self) -> TrainConfig:
        """The same run with its defaults made explicit (backbone, image size)."""
        weights = Path(self.imagenet_weights) if self.imagenet_weights else None
        backbone = self.backbone or default_backbone(weights)
        size = self.image_size or Preprocessing.for_backbone(backbone).image_size
        return TrainConfig(**{**asdict(self), "backbone": backbone, "image_size": size})

    def hyperparameters(self) -> dict[str, Any]:
        """What must match for a run to resume."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    return batch.to(device, memory_format=torch.channels_last, non_blocking=True)


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def embed_all(
    net: Embedder, inputs: TrainInputs, indices: list[int], batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors of the given train images with the current model (for mining), and which of
    them could be read at all."""
    net.eval()
    chunks, readable = [], []
    with torch.inference_mode():
        for batch, labels in tqdm(
            inputs.batches(indices, batch_size, augment=False),
            total=-(-len(indices) // batch_size),
            desc="mining: embedding the train split",
            unit="batch",
            dynamic_ncols=True,
            leave=False,
        ):
            chunks.append(net.embed_from(_to_device(batch, device), inputs.start_stage).cpu())
            readable.append(labels != UNREADABLE)
    set_trainable(net, inputs.start_stage)
    return torch.cat(chunks), torch.cat(readable)


def mine_tuples(
    descriptors: torch.Tensor,
    labels: list[int],
    negatives: int,
    queries: list[int],
    rng: random.Random,
    candidates: int = MINING_CANDIDATES,
    chunk: int = MINING_CHUNK,
) -> list[list[int]]:
    """(query, positive, hard negatives...) index tuples: negatives are the nearest other-class
    images under the current model, at most one per class so they are diverse.

    Neighbours come from FAISS top-`candidates` searches of `chunk` queries at a time, so memory
    is bounded by chunk x candidates whatever the dataset (never a queries x pool matrix).
    """
    vectors = np.ascontiguousarray(descriptors.numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    k = min(candidates, len(labels))
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    tuples = []
    for start in range(0, len(queries), chunk):
        batch = queries[start : start + chunk]
        _, neighbours = index.search(vectors[batch], k)
        for q, row in zip(batch, neighbours, strict=True):
            same = [i for i in by_class[labels[q]] if i != q]
            if not same:
                continue
            positive = rng.choice(same)
            chosen: list[int] = []
            used_classes: set[int] = set()
            for candidate in row.tolist():
                if candidate < 0:
                    break
                c = labels[candidate]
                if c in (labels[q], UNREADABLE) or c in used_classes:
                    continue
                chosen.append(candidate)
                used_classes.add(c)
                if len(chosen) == negatives:
                    break
            if chosen:
                tuples.append([q, positive, *chosen])
    return tuples


def tuple_loss(descriptors: torch.Tensor, n_tuples: int, margin: float) -> torch.Tensor:
    """Contrastive loss of tuples laid out as consecutive [q, p, n1..nk] blocks."""
    blocks = descriptors.view(n_tuples, -1, descriptors.size(1))
    query = blocks[:, :1].expand(-1, blocks.size(1) - 1, -1).reshape(-1, descriptors.size(1))
    others = blocks[:, 1:].reshape(-1, descriptors.size(1))
    same = torch.zeros(n_tuples, blocks.size(1) - 1, dtype=torch.bool)
    same[:, 0] = True
    return contrastive_loss(query, others, same.reshape(-1).to(descriptors.device), margin)


class CosineClassifier(nn.Module):
    """Normalised softmax head: logits = scale * cos(descriptor, class prototype)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale = scale

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.scale * descriptors @ F.normalize(self.prototypes, dim=1).T


def set_trainable(net: Embedder, freeze_stages: int) -> None:
    """Train mode, except the first `freeze_stages` trunk stages: no gradients and batch-norm
    statistics kept (small fine-tuning batches would only make them noisier)."""
    net.train()
    for i, stage in enumerate(net.trunk.stages):
        frozen = i < freeze_stages
        for p in stage.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            stage.eval()


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _steps_per_epoch(cfg: TrainConfig, n_train: int) -> tuple[int, int]:
    ce = math.ceil(n_train / cfg.ce_batch_size)
    queries = min(n_train, cfg.mining_pool or n_train, cfg.queries_per_epoch or n_train)
    return ce, math.ceil(queries / cfg.batch_size)


def _run_ce_epoch(
    net: Embedder,
    head: CosineClassifier,
    inputs: TrainInputs,
    order: list[int],
    cfg: TrainConfig,
    step: Callable[[torch.Tensor], None],
    device: torch.device,
    desc: str,
) -> float:
    """One epoch of normalised-softmax classification over the train split in `order`."""
    loss_sum, steps = 0.0, 0
    bar = tqdm(
        inputs.batches(order, cfg.ce_batch_size, augment=True),
        total=-(-len(order) // cfg.ce_batch_size),
        desc=desc,
        unit="step",
        dynamic_ncols=True,
    )
    for batch, labels in bar:
        keep = labels != UNREADABLE
        if not bool(keep.any()):
            continue
        descriptors = net.embed_from(_to_device(batch[keep], device), inputs.start_stage)
        loss = F.cross_entropy(head(descriptors), labels[keep].to(device))
        step(loss)
        loss_sum += loss.detach().item()
        steps += 1
        bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
    return loss_sum / max(steps, 1)


def make_inputs(
    net: Embedder,
    init: str,
    images: LabeledImages,
    preprocessing: Preprocessing,
    cfg: TrainConfig,
    device: torch.device,
) -> TrainInputs:
    """Cached frozen-stage maps when early stages are frozen, decoded images otherwise."""
    if cfg.freeze_stages > 0:
        maps, labels = stage_maps(
            net.trunk,
            cfg.freeze_stages,
            images,
            preprocessing,
            cfg.num_workers,
            device,
            Path(cfg.feature_cache) if cfg.feature_cache else None,
            weights_id=f"{cfg.backbone}:{init}",
        )
        return CachedStageInputs(maps, labels, cfg.freeze_stages, cfg.min_scale, cfg.seed)
    return PixelInputs(images, preprocessing, cfg.min_scale, cfg.num_workers)


def train_embedder(
    cfg: TrainConfig, out: Path, on_epoch: Callable[[int, float], None] | None = None
) -> Path:
    """Train (or resume) and write the final checkpoint to `out`; returns `out`."""
    out = Path(out)
    cfg = cfg.resolved()
    assert cfg.backbone is not None and cfg.image_size is not None
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = best_device(cfg.device)
    images = load_dataset(cfg.dataset, cfg.root, cfg.per_class)
    split = stratified_split(images.labels, cfg.train_fraction, cfg.seed)
    train_images = images.subset(split.train)
    preprocessing = Preprocessing.for_backbone(cfg.backbone, cfg.image_size)
    config = EmbedderConfig(cfg.backbone, cfg.pooling, cfg.attention)
    weights = Path(cfg.imagenet_weights) if cfg.imagenet_weights else None
    net, init = build_embedder(config, pretrained=cfg.pretrained, weights_path=weights)
    head = CosineClassifier(net.dim, len(images.class_names))
    # channels_last: depthwise and 1x1 convolutions run markedly faster in it on CPU and GPU.
    net.to(device).to(memory_format=torch.channels_last)
    head.to(device)
    set_trainable(net, cfg.freeze_stages)
    params = [p for p in [*net.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ce_steps, metric_steps = _steps_per_epoch(cfg, len(train_images))
    total_steps = cfg.ce_epochs * ce_steps + cfg.max_epochs * metric_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, min(cfg.warmup_steps, max(1, total_steps // 5)))
    )
    start_epoch, history = 0, []
    state_file = _state_path(out)
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        saved = {k: v for k, v in state["config"].items() if k not in RUNTIME_FIELDS}
        if saved == cfg.hyperparameters():
            net.load_state_dict(state["model"])
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history, init = state["epoch"], state["history"], state["init"]
            rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            log.info("resuming %s from epoch %d", out, start_epoch)
        else:
            log.warning("%s was made with other hyperparameters: starting afresh", state_file)

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    total_epochs = cfg.ce_epochs + cfg.max_epochs
    inputs = (
        make_inputs(net, init, train_images, preprocessing, cfg, device)
        if start_epoch < total_epochs
        else None
    )
    for epoch in range(start_epoch, total_epochs):
        assert inputs is not None
        desc = f"epoch {epoch + 1}/{total_epochs}"
        if epoch < cfg.ce_epochs:
            order = list(range(len(train_images)))
            rng.shuffle(order)
            mean_loss = _run_ce_epoch(
                net, head, inputs, order, cfg, step, device, desc + " (classification)"
            )
            history.append({"epoch": epoch + 1, "loss": mean_loss, "phase": "classification"})
        else:
            mean_loss, n_tuples = _run_contrastive_epoch(
                net, train_images.labels, inputs, cfg, device, rng, step, desc
            )
            history.append(
                {"epoch": epoch + 1, "loss": mean_loss, "tuples": n_tuples, "phase": "contrastive"}
            )
        atomic_torch_save(
            {
                "config": asdict(cfg),
                "model": net.state_dict(),
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "init": init,
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
            },
            state_file,
        )
        if on_epoch:
            on_epoch(epoch + 1, mean_loss)
    net.cpu().to(memory_format=torch.contiguous_format).eval()
    extra: dict[str, Any] = {
        "split_seed": cfg.seed,
        "train_fraction": cfg.train_fraction,
        "epochs": total_epochs,
        "history": history,
        "train_config": asdict(cfg),
    }
    ckpt = embedder_checkpoint(net, preprocessing, images.class_names, init, cfg.dataset, extra)
    save_checkpoint(ckpt, out)
    save_split(split, images, out.with_name(out.stem + ".split.json"))
    return out


def _run_contrastive_epoch(
    net: Embedder,
    labels: list[int],
    inputs: TrainInputs,
    cfg: TrainConfig,
    device: torch.device,
    rng: random.Random,
    step: Callable[[torch.Tensor], None],
    desc: str,
) -> tuple[float, int]:
    """One epoch of hard-negative mining and contrastive steps; (mean loss, tuples used)."""
    # As Radenovic et al.: a random pool of the train split is embedded each epoch and
    # queries, positives and negatives come from it (all of it by default).
    pool = list(range(len(labels)))
    if cfg.mining_pool and cfg.mining_pool < len(pool):
        pool = sorted(rng.sample(pool, cfg.mining_pool))
    descriptors, readable = embed_all(net, inputs, pool, max(cfg.batch_size * 4, 32), device)
    # Unreadable images take no part: their label becomes one no query shares.
    mining_labels = [
        labels[i] if ok else UNREADABLE for i, ok in zip(pool, readable.tolist(), strict=True)
    ]
    queries = [i for i in range(len(pool)) if mining_labels[i] != UNREADABLE]
    rng.shuffle(queries)
    if cfg.queries_per_epoch:
        queries = queries[: cfg.queries_per_epoch]
    tuples = [
        [pool[i] for i in t]
        for t in mine_tuples(descriptors, mining_labels, cfg.negatives, queries, rng)
    ]
    tuple_len = 2 + cfg.negatives
    flat = [i for t in tuples if len(t) == tuple_len for i in t]
    loss_sum, steps = 0.0, 0
    batch_size = cfg.batch_size * tuple_len  # batches hold whole tuples, in order
    bar = tqdm(
        inputs.batches(flat, batch_size, augment=True),
        total=-(-len(flat) // batch_size),
        desc=desc,
        unit="step",
        dynamic_ncols=True,
    )
    for batch, _ in bar:
        n_tuples = len(batch) // tuple_len
        descriptors = net.embed_from(_to_device(batch, device), inputs.start_stage)
        loss = tuple_loss(descriptors, n_tuples, cfg.margin)
        step(loss)
        loss_sum += loss.detach().item()
        steps += 1
        bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
    return loss_sum / max(steps, 1), len(tuples)
