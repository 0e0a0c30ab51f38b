"""Pairwise-consistency learning (PCL; Chen, Song, Wang and Jiang, NeurIPS 2021,
https://openreview.net/forum?id=NWYlZ5z8Q-R) as a training scheme for any registered backbone.

Training adds a CAM module on the input of the last down-sampling stage (the stride-16 stage's
output, 14 x 14 at 224), erases the image where the CAM of the predicted class exceeds gamma,
and asks the erased image's prediction to agree with the original's. The deployed model is the
plain classifier (trunk and main FC): no extra cost at inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import Trunk, create_trunk
from model.classifiers.base import Batch, Recipe, StepOutput
from model.classifiers.gradcam import normalize_min_max, upsample_maps
from model.classifiers.method import ClassifierMethod
from model.classifiers.plain import PlainClassifier, build_plain, class_activation_maps

DEFAULT_GAMMA = 0.7
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 2.0


def erase_above(images: torch.Tensor, maps: torch.Tensor, gamma: float) -> torch.Tensor:
    """`I* = M_B * I` with `M_B = 1 where M <= gamma, 0 where M > gamma` (maps: B x H x W)."""
    keep = (maps <= gamma).to(images.dtype).unsqueeze(1)
    return images * keep


def kl_divergence(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """`KL(q || p) = sum_k q_k (log q_k - log p_k)`, mean over the batch."""
    log_q = F.log_softmax(q_logits, dim=1)
    log_p = F.log_softmax(p_logits, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()


def pcl_loss(
    p_logits: torch.Tensor,
    r_logits: torch.Tensor,
    q_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`CE(p) + CE(r) + alpha CE(q) + beta KL(q || p)` and its terms (batch means)."""
    main = F.cross_entropy(p_logits, labels)
    side = F.cross_entropy(r_logits, labels)
    mod = F.cross_entropy(q_logits, labels)
    kl = kl_divergence(q_logits, p_logits)
    total = main + side + alpha * mod + beta * kl
    terms = {
        k: float(v.detach()) for k, v in {"main": main, "side": side, "mod": mod, "kl": kl}.items()
    }
    return total, terms


class CamModule(nn.Module):
    """1x1 conv -> GAP -> FC: a side classifier whose weights make a class activation map."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Side logits r and the conv output A (for the CAM)."""
        activations = self.conv(features)
        return self.fc(activations.mean(dim=(2, 3))), activations

    def cam(self, activations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """`M = sum_c W^t_c A_c` for each image's class t (B x h x w, not normalised)."""
        return class_activation_maps(activations, self.fc, classes)


class PCLClassifier(PlainClassifier):
    """Training-time PCL network: the plain classifier (trunk, main FC) plus the CAM module on
    the stride-16 stage and the modified image's classifier."""

    method = "pcl"

    def __init__(self, config: dict[str, Any], trunk: Trunk) -> None:
        super().__init__(config, trunk)
        self.gamma = float(config.get("gamma", DEFAULT_GAMMA))
        self.alpha = float(config.get("alpha", DEFAULT_ALPHA))
        self.beta = float(config.get("beta", DEFAULT_BETA))
        num_classes = int(config["num_classes"])
        self.cam_module = CamModule(trunk.stage_channels[2], num_classes)
        self.mod_fc = nn.Linear(trunk.channels, num_classes)

    def _stage3(self, images: torch.Tensor) -> torch.Tensor:
        """Output of the stride-16 stage: the input of the last down-sampling stage."""
        x = images
        for stage in self.trunk.stages[:3]:
            x = stage(x)
        return x

    def _pooled(self, stage3: torch.Tensor) -> torch.Tensor:
        return self.trunk.stages[3](stage3).mean(dim=(2, 3))

    def erase(
        self, images: torch.Tensor, activations: torch.Tensor, classes: torch.Tensor
    ) -> torch.Tensor:
        """The modified image I*: erased where the min-max CAM of `classes` exceeds gamma."""
        maps = normalize_min_max(self.cam_module.cam(activations.detach(), classes))
        maps = upsample_maps(maps, (images.shape[-2], images.shape[-1]))
        return erase_above(images, maps, self.gamma)

    def training_step(self, batch: Batch) -> StepOutput:
        images, labels = batch.images, batch.labels
        stage3 = self._stage3(images)
        p = self.fc(self._pooled(stage3))
        r, activations = self.cam_module(stage3)
        erased = self.erase(images, activations, p.detach().argmax(dim=1))
        q = self.mod_fc(self._pooled(self._stage3(erased)))
        loss, terms = pcl_loss(p, r, q, labels, self.alpha, self.beta)
        return StepOutput(loss, p, terms)

    def deploy_state_dict(self) -> dict[str, torch.Tensor]:
        """Trunk and main classifier only, in the plain classifier's layout."""
        return {
            k: v.detach().cpu().clone()
            for k, v in self.state_dict().items()
            if k.startswith(("trunk.", "fc."))
        }


def build_pcl(
    config: dict[str, Any], pretrained: bool = True, weights_path: Path | None = None
) -> tuple[PCLClassifier, str]:
    """The training network for PCL from its config (backbone, num_classes, gamma, alpha, beta)."""
    trunk, init = create_trunk(config["backbone"], pretrained, weights_path)
    return PCLClassifier(config, trunk), init


def build_pcl_deployed(config: dict[str, Any]) -> PlainClassifier:
    """What a PCL checkpoint holds: the trunk and main classifier (a plain classifier)."""
    deployed, _ = build_plain(config, False, None)
    deployed.method = "pcl"
    return deployed


def pcl_recipe(batch_size: int) -> Recipe:
    """Chen et al.: SGD momentum 0.9, cosine, lr 0.1 at batch 256 (scaled linearly), wd 5e-4."""
    return Recipe("sgd", lr=0.1 * batch_size / 256, weight_decay=5e-4, schedule="cosine")


METHOD = ClassifierMethod(
    name="pcl",
    description="pairwise-consistency learning with CAM erasing (Chen et al., NeurIPS 2021)",
    build=build_pcl,
    build_deployed=build_pcl_deployed,
    recipe=pcl_recipe,
)
