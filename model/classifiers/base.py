"""What every classifier method shares: the network interface, its optimiser recipe, batches.

Why an interface: one training loop, one evaluation and one inference path serve all methods;
each method only says how it computes its loss, which parameters get which learning rate and
what it deploys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.backbones import Trunk
from model.transforms import Preprocessing


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule. `schedule`: 'step' (x step_gamma every step_epochs), 'cosine'
    or 'constant'; groups a method marks unscheduled keep their learning rate."""

    optimizer: str = "sgd"  # "sgd" or "adam-amsgrad"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_epochs: int = 10
    step_gamma: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class ParamGroup:
    """Parameters with a learning-rate multiplier and whether the schedule applies to them."""

    params: list[nn.Parameter]
    lr_scale: float = 1.0
    scheduled: bool = True


@dataclass
class Batch:
    """One training batch: normalised, augmented images, labels, dataset indices, augmentations.

    `dihedral` holds, per image, (quarter turns, horizontal flip, vertical flip) so that a method
    can apply the same transform to anything it pairs with the image (DDRL-AM's map).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    dihedral: list[tuple[int, bool, bool]] = field(default_factory=list)


@dataclass
class StepOutput:
    """A training step's total loss, main logits and named loss terms (floats, for the log)."""

    loss: torch.Tensor
    logits: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


class SceneClassifier(nn.Module):
    """Base of all methods. `forward(images)` gives the deployed model's logits (B x K).

    Every method has a backbone `trunk` (model.backbones.Trunk: any registered backbone); its
    first `frozen_stages` stages can be kept fixed (`freeze_stages`).
    """

    method: str = ""
    trunk: Trunk

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.frozen_stages = 0

    def freeze_stages(self, count: int) -> None:
        """Keep the trunk's first `count` stages fixed: no gradients, and batch-norm statistics
        kept in train mode too (small fine-tuning batches would only make them noisier)."""
        self.frozen_stages = max(0, min(int(count), len(self.trunk.stages)))
        for i, stage in enumerate(self.trunk.stages):
            for p in stage.parameters():
                p.requires_grad_(i >= self.frozen_stages)

    def train(self, mode: bool = True) -> SceneClassifier:
        super().train(mode)
        if mode:
            for stage in self.trunk.stages[: self.frozen_stages]:
                stage.eval()
        return self

    def training_step(self, batch: Batch) -> StepOutput:
        """Loss of one batch in train mode; default: cross-entropy of `forward`."""
        logits = self(batch.images)
        loss = nn.functional.cross_entropy(logits, batch.labels)
        return StepOutput(loss, logits, {"ce": float(loss.detach())})

    def param_groups(self) -> list[ParamGroup]:
        """Default: every trainable parameter at the recipe's rate, scheduled."""
        return [ParamGroup([p for p in self.parameters() if p.requires_grad])]

    def after_backward(self) -> None:
        """Hook between backward and the optimiser step (center loss uses it)."""

    def after_step(self) -> None:
        """Hook after the optimiser step (center loss steps its own SGD here)."""

    def deploy_config(self) -> dict[str, Any]:
        """The config stored in the checkpoint: enough to rebuild the deployed network."""
        return dict(self.config)

    def deploy_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the deployed network (PCL drops its training-only parts)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def explain(self, images: torch.Tensor) -> torch.Tensor | None:
        """Attention or CAM maps (B x H x W in [0, 1]) for the predicted class, if the method
        has one; None otherwise."""
        return None

    def prepare_evaluation(self, cache_dir: Path | None, preprocessing: Preprocessing) -> None:
        """Set up what scoring many images needs (DDRL-AM: its map cache); default nothing."""

    def evaluation_logits(self, images: torch.Tensor, hashes: Sequence[str]) -> torch.Tensor:
        """Logits for evaluation; `hashes` identify the images' content (for caches)."""
        del hashes
        return self(images)


def apply_dihedral(image: torch.Tensor, params: tuple[int, bool, bool]) -> torch.Tensor:
    """Rotate by k quarter turns and flip (h, v) a C x H x W (or H x W) tensor."""
    turns, hflip, vflip = params
    out = torch.rot90(image, turns, dims=(-2, -1)) if turns % 4 else image
    if hflip:
        out = torch.flip(out, dims=(-1,))
    if vflip:
        out = torch.flip(out, dims=(-2,))
    return out


def random_dihedral(count: int, generator: torch.Generator) -> list[tuple[int, bool, bool]]:
    """Random right-angle rotations and flips: overhead scenes have no canonical orientation."""
    draws = torch.randint(0, 4, (count, 3), generator=generator).tolist()
    return [(int(k), bool(h % 2), bool(v % 2)) for k, h, v in draws]
