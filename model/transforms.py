"""Preprocessing: resize (never assume 256 x 256), tensor, ImageNet normalisation; augmentation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images become tensors; part of every checkpoint and of its fingerprint."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))

    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Deterministic: resize to a square, tensor, normalise."""
        return T.Compose(
            [
                T.Resize((self.image_size, self.image_size), antialias=True),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def train_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Flips and right-angle rotations: overhead scenes have no canonical orientation."""
        return T.Compose(
            [
                T.Resize((self.image_size, self.image_size), antialias=True),
                T.RandomHorizontalFlip(),
                T.RandomVerticalFlip(),
                T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )
