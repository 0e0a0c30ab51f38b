"""DDRL-AM (Li, Lin, Wang, Xu and Ding, arXiv:1902.07967; Remote Sensing 2020,
doi:10.3390/rs12091366): an RGB trunk stream fused with a saliency stream on Grad-CAM maps.

Step 1 fine-tunes a plain classifier (the attention network; the paper's ResNet-18, here any
registered backbone) and computes one Grad-CAM map per image on its last stage, for the
ground-truth class in training and the predicted class otherwise; the maps are cached per image
content and attention-network fingerprint. Step 2 trains the RGB trunk (started from the
attention network's weights), the SFT stream on the grey map, their element-wise product, an FC
classifier and a center loss. At inference the map comes from the predicted class.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import stage_sides
from model.checkpoint import fingerprint
from model.classifiers.base import (
    Batch,
    ParamGroup,
    Recipe,
    SceneClassifier,
    StepOutput,
    apply_dihedral,
)
from model.classifiers.center_loss import CenterLoss
from model.classifiers.gradcam import grey_attention_maps
from model.classifiers.method import ClassifierMethod, TrainRun
from model.classifiers.plain import PlainClassifier, build_plain
from model.transforms import Preprocessing

log = logging.getLogger(__name__)

# Li et al. give lambda = 0.5, but with the center loss summed over the flattened fused feature
# (11,520-d on EfficientNet-Lite0 at 96 px; 25,088-d on their ResNet-18) that term is about
# 2,000 against a cross-entropy near 2, and step 2 collapsed: UCM (40 a class, E = 8, seed 0)
# OA 61.9 % at 0.5, 90.5 at 0.1, 92.3 at 0.05, 94.05 at 0.01 and at 0 (the plain baseline
# at 2E: 94.05). 0.01 keeps the term (Wen et al. use 0.003-0.01) without harming the fit;
# `center_weight` in TrainConfig.options restores the paper's value.
DEFAULT_CENTER_WEIGHT = 0.01
DEFAULT_CENTER_LR = 0.5


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SFT(nn.Module):
    """Saliency stream: Conv64 7x7 s2 p3, BN, ReLU, MaxPool 3x3 s2 p1, then Conv 128/256/C
    3x3 s2 p1 with BN and ReLU: a 1 x 224 x 224 map becomes C x 7 x 7, the RGB trunk's shape
    (C = 512 on the paper's ResNet-18; the trunk's channel count on any other backbone)."""

    def __init__(self, channels: int = 512) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *_conv_bn_relu(1, 64, 7, 2, 3),
            nn.MaxPool2d(3, stride=2, padding=1),
            *_conv_bn_relu(64, 128, 3, 2, 1),
            *_conv_bn_relu(128, 256, 3, 2, 1),
            *_conv_bn_relu(256, channels, 3, 2, 1),
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.layers(maps)


def trunk_side(image_size: int) -> int:
    """Side of the trunk's (and SFT's) last map: stride 32, rounding up."""
    return stage_sides(image_size)[-1]


class GradCamCache:
    """Grey attention maps on disk (or in memory), keyed by attention-net fingerprint, image
    content hash and the class they explain ('gt<c>' given, 'pred' predicted)."""

    def __init__(self, directory: Path | None, model_fingerprint: str) -> None:
        self.directory = None if directory is None else Path(directory) / model_fingerprint
        self.memory: dict[str, tuple[np.ndarray, int]] = {}
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.npz"

    def get(self, key: str) -> tuple[np.ndarray, int] | None:
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        path = self._path(key)
        if path is not None and path.is_file():
            with np.load(path) as data:
                entry = (data["map"].astype(np.float32), int(data["cls"]))
            self.memory[key] = entry
            self.hits += 1
            return entry
        self.misses += 1
        return None

    def put(self, key: str, grey: np.ndarray, cls: int) -> None:
        self.memory[key] = (grey.astype(np.float32), cls)
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, map=grey.astype(np.float16), cls=np.int64(cls))
            tmp.replace(path)


class DDRLAM(SceneClassifier):
    """Attention network (frozen), RGB trunk, SFT, product fusion, FC, center loss."""

    method = "ddrl-am"

    def __init__(self, config: dict[str, Any], attention_net: PlainClassifier) -> None:
        super().__init__(config)
        num_classes = int(config["num_classes"])
        side = trunk_side(int(config["image_size"]))
        self.center_weight = float(config.get("center_weight", DEFAULT_CENTER_WEIGHT))
        self.center_lr = float(config.get("center_lr", DEFAULT_CENTER_LR))
        self.attention_net = attention_net
        for p in self.attention_net.parameters():
            p.requires_grad_(False)
        self.trunk = copy.deepcopy(attention_net.trunk)  # the RGB stream
        for p in self.trunk.parameters():
            p.requires_grad_(True)
        channels = self.trunk.channels
        self.sft = SFT(channels)
        self.feature_dim = channels * side * side
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.center_loss = CenterLoss(num_classes, self.feature_dim)
        self._step_features: tuple[torch.Tensor, torch.Tensor] | None = None
        self.training_maps: torch.Tensor | None = None  # N x S x S, set by the trainer
        self.map_cache: GradCamCache | None = None

    def train(self, mode: bool = True) -> DDRLAM:
        super().train(mode)
        self.attention_net.eval()  # the map maker is fixed: batch-norm in eval mode
        return self

    def attention_maps(
        self, images: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grey Grad-CAM maps (B x H x W) of the attention net for `classes` (else predicted)."""
        target = self.attention_net.trunk.stages[-1]
        return grey_attention_maps(self.attention_net, target, images, classes)

    def fused_features(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """`X_rgb * X_grey`, flattened (B x C*h*w)."""
        return torch.flatten(self.trunk(images) * self.sft(maps.unsqueeze(1)), 1)

    def forward(self, images: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        if maps is None:
            maps, _ = self.attention_maps(images)
        return self.fc(self.fused_features(images, maps))

    def cached_maps(
        self, images: torch.Tensor, hashes: Sequence[str], classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Maps through the cache (predicted class when `classes` is None)."""
        cache = self.map_cache or GradCamCache(None, "uncached")
        keys = [
            f"{h}_pred" if classes is None else f"{h}_gt{int(c)}"
            for h, c in zip(
                hashes, classes if classes is not None else [0] * len(hashes), strict=True
            )
        ]
        found = [cache.get(k) for k in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        out = torch.zeros(images.shape[0], images.shape[-2], images.shape[-1])
        if missing:
            wanted = None if classes is None else classes[missing]
            maps, chosen = self.attention_maps(images[missing], wanted)
            for j, i in enumerate(missing):
                cache.put(keys[i], maps[j].cpu().numpy(), int(chosen[j]))
                out[i] = maps[j].cpu()
        for i, entry in enumerate(found):
            if entry is not None:
                out[i] = torch.from_numpy(entry[0])
        return out.to(images.device)

    def evaluation_logits(self, images: torch.Tensor, hashes: Sequence[str]) -> torch.Tensor:
        """Logits with the predicted-class maps taken from (and added to) the cache."""
        return self(images, self.cached_maps(images, hashes))

    def prepare_evaluation(self, cache_dir: Path | None, preprocessing: Preprocessing) -> None:
        """Maps of evaluated images go through a cache bound to this attention network."""
        state = {k: v.cpu() for k, v in self.attention_net.state_dict().items()}
        self.map_cache = GradCamCache(cache_dir, fingerprint(state, preprocessing))

    def training_step(self, batch: Batch) -> StepOutput:
        if self.training_maps is None:
            raise RuntimeError("DDRL-AM needs its training maps (set training_maps) first")
        maps = self.training_maps[batch.indices.cpu()]
        if batch.dihedral:  # the image's rotation/flip, applied to its map
            maps = torch.stack(
                [apply_dihedral(m, d) for m, d in zip(maps, batch.dihedral, strict=True)]
            )
        features = self.fused_features(batch.images, maps.to(batch.images.device))
        logits = self.fc(features)
        ce = F.cross_entropy(logits, batch.labels)
        center = self.center_loss(features, batch.labels)
        loss = ce + self.center_weight * center
        self._step_features = (features.detach(), batch.labels)
        return StepOutput(
            loss, logits, {"ce": float(ce.detach()), "center": float(center.detach())}
        )

    def param_groups(self) -> list[ParamGroup]:
        """Paper: RGB trunk at 0.1 x the base lr (1e-4), unscheduled; SFT and FC at the base lr
        (1e-3), x0.1 every 10 epochs. The centers have their own update (after_step)."""
        return [
            ParamGroup(list(self.trunk.parameters()), lr_scale=0.1, scheduled=False),
            ParamGroup(list(self.sft.parameters()) + list(self.fc.parameters())),
        ]

    def after_step(self) -> None:
        """The centers follow Wen et al.'s update with alpha = center_lr (paper: 0.5)."""
        if self._step_features is not None:
            self.center_loss.update_centers(*self._step_features, self.center_lr)
            self._step_features = None

    def explain(self, images: torch.Tensor) -> torch.Tensor | None:
        maps, _ = self.attention_maps(images)
        return maps


def build_ddrl_am(
    config: dict[str, Any],
    pretrained: bool = True,
    weights_path: Path | None = None,
    attention_net: PlainClassifier | None = None,
) -> tuple[DDRLAM, str]:
    """DDRL-AM from its config; `attention_net` is the fine-tuned plain classifier of step 1 (a
    fresh one when rebuilding from a checkpoint, whose weights then overwrite it)."""
    init = "checkpoint"
    if attention_net is None:
        attention_net, init = build_plain(_attention_config(config), pretrained, weights_path)
    return DDRLAM(config, attention_net), init


def _attention_config(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "method": "plain"}


def train_ddrl_am(
    method: ClassifierMethod, run: TrainRun
) -> tuple[DDRLAM, str, list[dict[str, Any]]]:
    """Step 1: fine-tune the attention network (Adam AMSGrad at the base rate) and cache its
    ground-truth-class maps of the training images; step 2: train the two-stream network."""
    del method
    config = run.config
    torch.manual_seed(config.seed)
    attention, init = build_plain(
        _attention_config(run.model_config), config.pretrained, config.weights_path
    )
    epochs1 = config.attention_epochs if config.attention_epochs is not None else config.epochs
    history = run.fit(
        attention,
        "ddrl-am step 1 (attention net)",
        recipe=replace(run.recipe, optimizer="adam-amsgrad"),
        epochs=epochs1,
    )
    for record in history:
        record["stage"] = "attention"
    net, _ = build_ddrl_am(run.model_config, attention_net=attention)
    net.prepare_evaluation(config.cache_dir, run.preprocessing)
    net.to(run.device).eval()
    bank = run.bank
    maps = torch.zeros(len(bank), bank.image_size, bank.image_size)
    for start in range(0, len(run.train), 64):
        chosen = run.train[start : start + 64]
        images = bank.normalized(chosen, run.preprocessing).to(run.device)
        maps[chosen] = net.cached_maps(
            images, [bank.hashes[i] for i in chosen], bank.labels[chosen].to(run.device)
        ).cpu()
    net.training_maps = maps
    history2 = run.fit(net, "ddrl-am step 2 (two streams)", seed=config.seed + 1)
    net.training_maps = None
    return net, init, history + history2


def ddrl_am_recipe(batch_size: int) -> Recipe:
    """Li et al.: Adam with AMSGrad (0.9, 0.999, 1e-8), lr 1e-3 (trunk 1e-4), x0.1 / 10 epochs."""
    del batch_size
    return Recipe("adam-amsgrad", lr=1e-3, weight_decay=0.0, schedule="step", step_epochs=10)


METHOD = ClassifierMethod(
    name="ddrl-am",
    description="Grad-CAM attention map + SFT stream + center loss (Li et al., 2020)",
    build=build_ddrl_am,
    build_deployed=lambda config: build_ddrl_am(config, False, None)[0],
    recipe=ddrl_am_recipe,
    trainer=train_ddrl_am,
    export_refusal=(
        "DDRL-AM cannot be exported: its forward pass computes a Grad-CAM map, i.e. a "
        "backward pass through its attention network, and an inference graph has no "
        "autograd. Serve it with torch."
    ),
)
