"""The retrieval embedder of Chen, Wang, Chen, Qiu and He (2021, doi:10.12677/csa.2021.113052):
a backbone trunk, dual attention, pooling, L2 normalisation. Any registered backbone
(model/backbones.py) carries it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import DualAttention
from model.backbones import Trunk, create_trunk
from model.pooling import make_pooling


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything needed to rebuild an embedder (stored in every checkpoint)."""

    backbone: str = "resnet50"
    pooling: str = "gem"
    attention: bool = True
    attention_reduction: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Embedder(nn.Module):
    """Image batch (B x 3 x H x W) -> unit descriptors (B x D); D is the trunk's channel count
    (2048 for ResNet-50, 1280 for EfficientNet-Lite)."""

    def __init__(self, config: EmbedderConfig, trunk: Trunk, channels: int) -> None:
        super().__init__()
        self.config = config
        self.trunk: Trunk = trunk
        self.attention: nn.Module = (
            DualAttention(channels, config.attention_reduction)
            if config.attention
            else nn.Identity()
        )
        self.pool = make_pooling(config.pooling)
        self.dim = channels

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The attended feature map before pooling (used for heat-maps)."""
        return self.attention(self.trunk(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_from(images, 0)

    def embed_from(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Descriptors from the input of trunk stage `stage` (0: images). Training with frozen
        early stages feeds their cached output here."""
        return F.normalize(self.pool(self.attention(self.trunk.forward_from(x, stage))), dim=1)


def build_embedder(
    config: EmbedderConfig, pretrained: bool = True, weights_path: Path | None = None
) -> tuple[Embedder, str]:
    """A new embedder and its initialisation ('imagenet:<file>' or 'random')."""
    trunk, init = create_trunk(config.backbone, pretrained=pretrained, weights_path=weights_path)
    return Embedder(config, trunk, trunk.channels), init
