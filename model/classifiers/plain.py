"""The plain baseline: a torchvision ResNet (18/34/50) trained with cross-entropy only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from model.backbones import build_resnet
from model.classifiers.base import Recipe, SceneClassifier


def resnet_features(net: models.ResNet, images: torch.Tensor) -> torch.Tensor:
    """The last conv block's output (B x C x h x w) of a torchvision ResNet."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def class_activation_maps(
    features: torch.Tensor, fc: nn.Linear, classes: torch.Tensor
) -> torch.Tensor:
    """CAM (Zhou et al.): `M = sum_c W^t_c A_c` for the class t of each image (B x h x w)."""
    weights = fc.weight.index_select(0, classes)  # B x C
    return torch.einsum("bc,bchw->bhw", weights, features)


def stage_out_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (its last block's last conv)."""
    last = list(stage.children())[-1]
    conv = getattr(last, "conv3", None) or getattr(last, "conv2")  # noqa: B009
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"not a torchvision ResNet stage: {type(last).__name__}")
    return int(conv.out_channels)


class PlainClassifier(SceneClassifier):
    """ResNet -> GAP -> FC, cross-entropy; its explanation is the CAM of the predicted class."""

    method = "plain"

    def __init__(self, config: dict[str, Any], net: models.ResNet) -> None:
        super().__init__(config)
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> torch.Tensor | None:
        from model.classifiers.gradcam import normalize_min_max, upsample_maps

        features = resnet_features(self.net, images)
        logits = self.net.fc(torch.flatten(self.net.avgpool(features), 1))
        maps = class_activation_maps(features, self.net.fc, logits.argmax(dim=1))
        return normalize_min_max(upsample_maps(maps, (images.shape[-2], images.shape[-1])))


def build_resnet_classifier(
    backbone: str, num_classes: int, pretrained: bool, weights_path: Path | None
) -> tuple[models.ResNet, str]:
    """A torchvision ResNet whose FC has `num_classes` outputs, and its initialisation."""
    net, init = build_resnet(backbone, pretrained=pretrained, weights_path=weights_path)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net, init


def build_plain(
    config: dict[str, Any], pretrained: bool = True, weights_path: Path | None = None
) -> tuple[PlainClassifier, str]:
    """A plain classifier from its config: backbone, num_classes."""
    net, init = build_resnet_classifier(
        config["backbone"], int(config["num_classes"]), pretrained, weights_path
    )
    return PlainClassifier(config, net), init


def plain_recipe(batch_size: int) -> Recipe:
    """SGD momentum 0.9, weight decay 5e-4, cosine schedule, lr 0.1 scaled by batch/256."""
    return Recipe("sgd", lr=0.1 * batch_size / 256, weight_decay=5e-4, schedule="cosine")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (a named helper so every method's loss reads the same)."""
    return F.cross_entropy(logits, labels)
