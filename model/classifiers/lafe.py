"""LAFE (Shi, Gao, Xu, Jian, Wang and Liu, ACM MM 2020, doi:10.1145/3394171.3413883):
discriminative and confusable features from channel and region attention.

The trunk's stages at strides 8, 16, 32 (the paper's ResNet stages 3, 4, 5: 512, 1024, 2048
channels on ResNet-50; 40, 112, 1280 on EfficientNet-Lite0) each get two copies
(discriminative, confusable) of a channel attention (SE) and a region attention (one weight per
spatial position). Their features are fused across stages, and the classifier sees
`F_5 = f_5 + U_dis - U_con`. The trunk itself runs unchanged on the original features.
The region attention's FC sizes depend on H*W, so a model is bound to its input size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import Trunk, create_trunk, stage_sides
from model.classifiers.base import Batch, Recipe, SceneClassifier, StepOutput
from model.classifiers.data import paired_batches
from model.classifiers.method import ClassifierMethod
from model.classifiers.plain import predicted_cam


def stage_sizes(image_size: int) -> tuple[int, int, int]:
    """Side of the stage-3/4/5 maps (strides 8, 16, 32) for a square input."""
    _, s3, s4, s5 = stage_sides(image_size)
    return s3, s4, s5


class ChannelAttention(nn.Module):
    """SE: GAP -> FC C/r -> ReLU -> FC C -> sigmoid, a weight per channel."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * weights[:, :, None, None]


class RegionAttention(nn.Module):
    """Squeeze over channels to z in R^(WH), FC to WH/7 -> ReLU -> FC to WH -> sigmoid weights."""

    def __init__(self, positions: int, reduction: int = 7) -> None:
        super().__init__()
        hidden = max(positions // reduction, 1)
        self.positions = positions
        self.fc1 = nn.Linear(positions, hidden)
        self.fc2 = nn.Linear(hidden, positions)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """One weight per spatial position (B x WH)."""
        z = x.mean(dim=1).flatten(1)
        if z.shape[1] != self.positions:
            raise ValueError(
                f"region attention built for {self.positions} positions got {z.shape[1]}: "
                "LAFE models are bound to the input size they were built for"
            )
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x * self.weights(x).view(b, 1, h, w)


class StageAttention(nn.Module):
    """Discriminative and confusable copies: `dis = r_dis + c_dis`, `con = r_con + c_con`."""

    def __init__(self, channels: int, positions: int) -> None:
        super().__init__()
        self.dis_channel = ChannelAttention(channels)
        self.dis_region = RegionAttention(positions)
        self.con_channel = ChannelAttention(channels)
        self.con_region = RegionAttention(positions)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dis = self.dis_region(f) + self.dis_channel(f)
        con = self.con_region(f) + self.con_channel(f)
        return dis, con


class CrossStageFusion(nn.Module):
    """`U = ReLU(BN(W1(U_L + maxpool(ReLU(W2 U_(L-1))))))`, W1, W2 1x1 convs."""

    def __init__(self, previous_channels: int, channels: int) -> None:
        super().__init__()
        self.w2 = nn.Conv2d(previous_channels, channels, kernel_size=1, bias=False)
        self.w1 = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        lifted = F.adaptive_max_pool2d(F.relu(self.w2(previous)), current.shape[-2:])
        return F.relu(self.bn(self.w1(current + lifted)))


def paired_mae(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`L_dis`: mean |a - b| over adjacent pairs (0,1), (2,3), ... that share a label."""
    n = features.shape[0] // 2 * 2
    if n == 0:
        return features.sum() * 0.0
    first, second = features[0:n:2], features[1:n:2]
    same = (labels[0:n:2] == labels[1:n:2]).to(features.dtype)
    if float(same.sum()) == 0.0:
        return features.sum() * 0.0
    per_pair = (first - second).abs().mean(dim=1)
    return (per_pair * same).sum() / same.sum()


class LAFEClassifier(SceneClassifier):
    """Trunk + stage attentions + cross-stage fusion; loss `L_cls + L_dis + L_con`."""

    method = "lafe"

    def __init__(self, config: dict[str, Any], trunk: Trunk) -> None:
        super().__init__(config)
        num_classes = int(config["num_classes"])
        self.trunk = trunk
        channels = list(trunk.stage_channels[1:])
        sides = stage_sizes(int(config["image_size"]))
        self.attention = nn.ModuleList(
            StageAttention(c, s * s) for c, s in zip(channels, sides, strict=True)
        )
        self.fuse_dis = nn.ModuleList(
            [CrossStageFusion(channels[0], channels[1]), CrossStageFusion(channels[1], channels[2])]
        )
        self.fuse_con = nn.ModuleList(
            [CrossStageFusion(channels[0], channels[1]), CrossStageFusion(channels[1], channels[2])]
        )
        self.classifier = nn.Linear(channels[2], num_classes)
        self.con_fc = nn.Linear(channels[2], num_classes)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(F_5, fused discriminative U_dis, fused confusable U_con) at stage 5."""
        _, f3, f4, f5 = self.trunk.forward_stages(images)
        dis3, con3 = self.attention[0](f3)
        dis4, con4 = self.attention[1](f4)
        dis5, con5 = self.attention[2](f5)
        u_dis = self.fuse_dis[1](dis5, self.fuse_dis[0](dis4, dis3))
        u_con = self.fuse_con[1](con5, self.fuse_con[0](con4, con3))
        return f5 + u_dis - u_con, u_dis, u_con

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        final, _, _ = self.features(images)
        return self.classifier(final.mean(dim=(2, 3)))

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> torch.Tensor | None:
        """CAM of the predicted class on F_5 (the classifier is GAP + FC on it)."""
        final, _, _ = self.features(images)
        return predicted_cam(final, self.classifier, (images.shape[-2], images.shape[-1]))

    def training_step(self, batch: Batch) -> StepOutput:
        final, u_dis, u_con = self.features(batch.images)
        logits = self.classifier(final.mean(dim=(2, 3)))
        cls = F.cross_entropy(logits, batch.labels)
        dis = paired_mae(u_dis.mean(dim=(2, 3)), batch.labels)
        con_scores = self.con_fc(u_con.mean(dim=(2, 3)))
        con = F.l1_loss(con_scores, torch.ones_like(con_scores))
        terms = {"cls": float(cls.detach()), "dis": float(dis.detach()), "con": float(con.detach())}
        return StepOutput(cls + dis + con, logits, terms)


def build_lafe(
    config: dict[str, Any], pretrained: bool = True, weights_path: Path | None = None
) -> tuple[LAFEClassifier, str]:
    """LAFE from its config (backbone, num_classes, image_size)."""
    trunk, init = create_trunk(config["backbone"], pretrained, weights_path)
    return LAFEClassifier(config, trunk), init


def lafe_recipe(batch_size: int) -> Recipe:
    """Shi et al.: SGD momentum 0.9, wd 5e-4, lr 0.0015 at batch 16 (scaled), x0.1 / 40 epochs."""
    return Recipe(
        "sgd", lr=0.0015 * batch_size / 16, weight_decay=5e-4, schedule="step", step_epochs=40
    )


METHOD = ClassifierMethod(
    name="lafe",
    description="discriminative/confusable channel+region attention (Shi et al., ACM MM 2020)",
    build=build_lafe,
    build_deployed=lambda config: build_lafe(config, False, None)[0],
    recipe=lafe_recipe,
    sampler=paired_batches,
)
