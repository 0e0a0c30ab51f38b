"""torchvision ResNet trunks with ImageNet weights when they are on disk, random init otherwise.

No weights are ever downloaded: they come from the local torch hub cache or a path the user
gives. Which one was used is returned so that every figure can state its initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from torch import nn
from torchvision import models

log = logging.getLogger(__name__)

_BUILDERS: dict[str, tuple[Callable[..., models.ResNet], models.WeightsEnum]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
}
RANDOM_INIT = "random"


def list_backbones() -> list[str]:
    """Backbone names that `build_resnet` accepts."""
    return sorted(_BUILDERS)


def _cached_weights_file(weights: models.WeightsEnum) -> Path:
    filename = weights.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


@cache
def _log_random_init_once(name: str) -> None:
    log.warning(
        "no ImageNet weights for %s in the torch cache or at RSIR_IMAGENET_WEIGHTS: "
        "starting from random initialisation",
        name,
    )


def build_resnet(
    name: str, pretrained: bool = True, weights_path: Path | None = None
) -> tuple[models.ResNet, str]:
    """A torchvision ResNet and its initialisation: 'imagenet:<file>' or 'random'."""
    try:
        builder, weights = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}") from None
    net = builder(weights=None)
    if not pretrained:
        return net, RANDOM_INIT
    candidate = weights_path if weights_path is not None else _cached_weights_file(weights)
    if candidate.is_file():
        state = torch.load(candidate, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return net, f"imagenet:{candidate.name}"
    _log_random_init_once(name)
    return net, RANDOM_INIT


def resnet_trunk(net: models.ResNet) -> nn.Sequential:
    """The convolutional trunk up to layer4 (no pooling, no FC)."""
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )


def trunk_channels(net: models.ResNet) -> int:
    """Channels of layer4's output: 512 for ResNet-18/34, 2048 for ResNet-50."""
    return int(net.fc.in_features)
