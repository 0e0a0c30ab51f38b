"""The plain baseline: a backbone trunk (any registered backbone), GAP, FC, cross-entropy only.

Its explanation is the class activation map (CAM; Zhou et al., CVPR 2016,
arXiv:1512.04150) of the predicted class on the last stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.backbones import Trunk, create_trunk
from model.classifiers.base import Recipe, SceneClassifier
from model.classifiers.gradcam import normalize_min_max, upsample_maps
from model.classifiers.method import ClassifierMethod


def class_activation_maps(
    features: torch.Tensor, fc: nn.Linear, classes: torch.Tensor
) -> torch.Tensor:
    """CAM (Zhou et al.): `M = sum_c W^t_c A_c` for the class t of each image (B x h x w)."""
    weights = fc.weight.index_select(0, classes)  # B x C
    return torch.einsum("bc,bchw->bhw", weights, features)


def predicted_cam(
    features: torch.Tensor, fc: nn.Linear, image_size: tuple[int, int]
) -> torch.Tensor:
    """Min-max normalised CAM of the class `fc` predicts from GAP(features), upsampled to
    the image (B x H x W in [0, 1])."""
    logits = fc(features.mean(dim=(2, 3)))
    maps = class_activation_maps(features, fc, logits.argmax(dim=1))
    return normalize_min_max(upsample_maps(maps, image_size))


class PlainClassifier(SceneClassifier):
    """Trunk -> GAP -> FC, cross-entropy; its explanation is the CAM of the predicted class."""

    method = "plain"

    def __init__(self, config: dict[str, Any], trunk: Trunk) -> None:
        super().__init__(config)
        self.trunk = trunk
        self.fc = nn.Linear(trunk.channels, int(config["num_classes"]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(images).mean(dim=(2, 3)))

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> torch.Tensor | None:
        return predicted_cam(self.trunk(images), self.fc, (images.shape[-2], images.shape[-1]))


def build_plain(
    config: dict[str, Any], pretrained: bool = True, weights_path: Path | None = None
) -> tuple[PlainClassifier, str]:
    """A plain classifier from its config (backbone, num_classes) and its initialisation."""
    trunk, init = create_trunk(config["backbone"], pretrained, weights_path)
    return PlainClassifier(config, trunk), init


def plain_recipe(batch_size: int) -> Recipe:
    """SGD momentum 0.9, weight decay 5e-4, cosine schedule, lr 0.1 scaled by batch/256."""
    return Recipe("sgd", lr=0.1 * batch_size / 256, weight_decay=5e-4, schedule="cosine")


METHOD = ClassifierMethod(
    name="plain",
    description="backbone with cross-entropy only (the baseline)",
    build=build_plain,
    build_deployed=lambda config: build_plain(config, False, None)[0],
    recipe=plain_recipe,
)
