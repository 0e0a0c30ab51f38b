"""Grad-CAM (Selvaraju et al., ICCV 2017, doi:10.1109/ICCV.2017.74) for any network and layer,
and CAM-map helpers.

Why generic: DDRL-AM needs Grad-CAM of a ResNet-18's last conv block, the service needs maps for
whatever classifier it serves, and a test checks the maths on a tiny model with a known head.
The forward hook lives only for the duration of one call, so a model can be shared by threads.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def grad_cam(
    model: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw Grad-CAM maps at the target layer's resolution, the classes used and the logits.

    `alpha_k = mean_ij d y^c / d A^k_ij`, `L = ReLU(sum_k alpha_k A^k)`; c is `classes` when given
    (ground truth in training) and the predicted top-1 class otherwise. Returns (B x h x w maps,
    B classes, B x K logits, detached). The model should be in eval mode: in train mode
    batch-norm would couple the images of a batch.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured.append(output)

    handle = target_layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            inputs = images.detach().requires_grad_(True)
            logits = model(inputs)
            if not captured:
                raise RuntimeError("the target layer was not used by the model's forward pass")
            activations = captured[-1]
            chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
            score = logits.gather(1, chosen.view(-1, 1)).sum()
            (gradients,) = torch.autograd.grad(score, activations)
    finally:
        handle.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # alpha_k per image
    maps = F.relu((weights * activations).sum(dim=1))
    return maps.detach(), chosen.detach(), logits.detach()


def normalize_max(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each map (B x H x W) by its maximum into [0, 1] (an all-zero map stays zero)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(eps).view(-1, 1, 1)
    return (maps / peak).clamp(0.0, 1.0)


def normalize_min_max(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map (B x H x W) to [0, 1], as CAM-erasing (PCL) prescribes."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1)
    high = flat.amax(dim=1).view(-1, 1, 1)
    return (maps - low) / (high - low).clamp_min(eps)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of B x h x w maps to B x H x W."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def grey_attention_maps(
    model: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM upsampled to the image size as grey images in [0, 1] (B x H x W), and classes."""
    maps, chosen, _ = grad_cam(model, target_layer, images, classes)
    grey = normalize_max(upsample_maps(maps, (images.shape[-2], images.shape[-1])).clamp_min(0))
    return grey, chosen


def map_to_png(grey: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """One H x W map in [0, 1] as an 8-bit grey PNG, resized to `size` (width, height) if given."""
    array = grey.detach().cpu().numpy() if isinstance(grey, torch.Tensor) else np.asarray(grey)
    image = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
