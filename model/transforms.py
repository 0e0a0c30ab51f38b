"""Preprocessing: resize (never assume 256 x 256), tensor, the backbone's normalisation;
augmentation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from model.backbones import IMAGENET_MEAN, IMAGENET_STD, get_backbone


@dataclass(frozen=True)
class Preprocessing:
    """How images become tensors; part of every checkpoint and of its fingerprint."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_backbone(cls, backbone: str, image_size: int | None = None) -> Preprocessing:
        """The mean and std the backbone's weights were trained with; its native size unless
        another is asked for."""
        spec = get_backbone(backbone)
        return cls(image_size or spec.native_size, spec.mean, spec.std)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))

    def pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Deterministic resize to the square, as uint8 3 x S x S: what `eval_transform`
        normalises. Decoding processes hand these on (a quarter of the float bytes) and
        `normalize` runs once a batch where the model runs."""
        size = (self.image_size, self.image_size)
        return T.Compose([T.Resize(size, antialias=True), T.PILToTensor()])

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x S x S (or 3 x S x S) -> float on the same device, bit for bit what
        `eval_transform`'s ToTensor and Normalize compute."""
        x = pixels.float().div_(255.0)
        shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x.sub_(mean).div_(std)

    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Deterministic: resize to a square, tensor, normalise."""
        return T.Compose(
            [
                T.Resize((self.image_size, self.image_size), antialias=True),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def train_transform(self, min_scale: float = 1.0) -> Callable[[Image.Image], torch.Tensor]:
        """Flips and right-angle rotations (overhead scenes have no canonical orientation) and,
        when `min_scale` < 1, a random crop of that fraction of the area or more (scale: the
        same ground seen at another resolution)."""
        size = (self.image_size, self.image_size)
        resize: Any = (
            T.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)
            if min_scale < 1.0
            else T.Resize(size, antialias=True)
        )
        return T.Compose(
            [
                resize,
                T.RandomHorizontalFlip(),
                T.RandomVerticalFlip(),
                T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )
