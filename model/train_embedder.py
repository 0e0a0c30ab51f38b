"""Train the retrieval embedder with the contrastive loss and hard negatives (paper 002).

Each epoch, as Radenovic et al. do, the current model embeds the training images; every query
gets a random positive of its class and the nearest images of other classes as negatives.
Training resumes from the last finished epoch when a state file is present.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.checkpoint import atomic_torch_save, embedder_checkpoint, save_checkpoint
from model.datasets import (
    UNREADABLE,
    ImageFolderDataset,
    LabeledImages,
    discover_dataset,
    limit_per_class,
    save_split,
    stratified_split,
)
from model.device import best_device
from model.embedder import Embedder, EmbedderConfig, build_embedder
from model.losses import contrastive_loss
from model.transforms import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in its state for resuming)."""

    dataset: str
    root: str
    backbone: str = "resnet50"
    pooling: str = "gem"
    attention: bool = True
    image_size: int = 224
    batch_size: int = 8  # tuples per step; each tuple is 2 + negatives images
    max_epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-6
    margin: float = 0.7
    negatives: int = 2
    queries_per_epoch: int | None = None  # None: every training image once
    mining_pool: int | None = None  # images embedded for mining each epoch; None: all
    seed: int = 0
    train_fraction: float = 0.8
    per_class: int | None = None  # class-balanced subset, for quick runs
    num_workers: int = 2
    device: str = "auto"
    pretrained: bool = True
    imagenet_weights: str | None = None


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def embed_all(
    net: Embedder,
    images: LabeledImages,
    preprocessing: Preprocessing,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors of every training image with the current model (for mining), and which
    images could be read at all."""
    loader = DataLoader(
        ImageFolderDataset(images.paths, images.labels, preprocessing.eval_transform()),
        batch_size=max(cfg.batch_size * 4, 16),
        num_workers=cfg.num_workers,
    )
    net.eval()
    chunks, readable = [], []
    with torch.inference_mode():
        for batch, labels in tqdm(
            loader,
            desc="mining: embedding the train split",
            unit="batch",
            dynamic_ncols=True,
            leave=False,
        ):
            chunks.append(net(batch.to(device)).cpu())
            readable.append(labels != UNREADABLE)
    net.train()
    return torch.cat(chunks), torch.cat(readable)


def mine_tuples(
    descriptors: torch.Tensor,
    labels: list[int],
    negatives: int,
    queries: list[int],
    rng: random.Random,
) -> list[list[int]]:
    """(query, positive, hard negatives...) index tuples: negatives are the nearest other-class
    images under the current model, at most one per class so they are diverse."""
    label_array = torch.tensor(labels)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    tuples = []
    similarity = descriptors[queries] @ descriptors.T
    for row, q in enumerate(queries):
        same = [i for i in by_class[labels[q]] if i != q]
        if not same:
            continue
        positive = rng.choice(same)
        order = torch.argsort(similarity[row], descending=True)
        chosen: list[int] = []
        used_classes: set[int] = set()
        for candidate in order.tolist():
            c = int(label_array[candidate])
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


def train_embedder(
    cfg: TrainConfig, out: Path, on_epoch: Callable[[int, float], None] | None = None
) -> Path:
    """Train (or resume) and write the final checkpoint to `out`; returns `out`."""
    out = Path(out)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = best_device(cfg.device)
    images = discover_dataset(cfg.dataset, cfg.root)
    for note in images.notes:
        log.info(note)
    if cfg.per_class:
        images = limit_per_class(images, cfg.per_class)
    split = stratified_split(images.labels, cfg.train_fraction, cfg.seed)
    train_images = images.subset(split.train)
    preprocessing = Preprocessing(cfg.image_size)
    config = EmbedderConfig(cfg.backbone, cfg.pooling, cfg.attention)
    weights = Path(cfg.imagenet_weights) if cfg.imagenet_weights else None
    net, init = build_embedder(config, pretrained=cfg.pretrained, weights_path=weights)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.99)
    start_epoch, history = 0, []
    state_file = _state_path(out)
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        if state["config"] == asdict(cfg):
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history, init = state["epoch"], state["history"], state["init"]
            rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            log.info("resuming %s from epoch %d", out, start_epoch)
        else:
            log.warning("%s was made with another configuration: starting afresh", state_file)
    train_set = ImageFolderDataset(
        train_images.paths, train_images.labels, preprocessing.train_transform()
    )
    for epoch in range(start_epoch, cfg.max_epochs):
        # As Radenovic et al.: a random pool of the train split is embedded each epoch and
        # queries, positives and negatives come from it (all of it by default).
        pool = list(range(len(train_images)))
        if cfg.mining_pool and cfg.mining_pool < len(pool):
            pool = sorted(rng.sample(pool, cfg.mining_pool))
        pool_images = train_images.subset(pool)
        descriptors, readable = embed_all(net, pool_images, preprocessing, cfg, device)
        # Unreadable images take no part: their label becomes one no query shares.
        mining_labels = [
            label if ok else UNREADABLE
            for label, ok in zip(pool_images.labels, readable.tolist(), strict=True)
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
        # Decoding on worker processes; batches hold whole tuples, in order.
        loader = DataLoader(
            torch.utils.data.Subset(train_set, flat),
            batch_size=cfg.batch_size * tuple_len,
            shuffle=False,
            num_workers=cfg.num_workers,
        )
        loss_sum, steps = 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.max_epochs}", unit="step", dynamic_ncols=True
        )
        for batch, _ in bar:
            n_tuples = len(batch) // tuple_len
            loss = tuple_loss(net(batch.to(device)), n_tuples, cfg.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().item()
            steps += 1
            bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
        scheduler.step()
        mean_loss = loss_sum / max(steps, 1)
        history.append({"epoch": epoch + 1, "loss": mean_loss, "tuples": len(tuples)})
        atomic_torch_save(
            {
                "config": asdict(cfg),
                "model": net.state_dict(),
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
    net.cpu().eval()
    extra: dict[str, Any] = {
        "split_seed": cfg.seed,
        "train_fraction": cfg.train_fraction,
        "epochs": cfg.max_epochs,
        "history": history,
        "train_config": asdict(cfg),
    }
    ckpt = embedder_checkpoint(net, preprocessing, images.class_names, init, cfg.dataset, extra)
    save_checkpoint(ckpt, out)
    save_split(split, images, out.with_name(out.stem + ".split.json"))
    return out
