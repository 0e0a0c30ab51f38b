"""Grad-CAM of the retrieval embedder: where it looks when it describes a query (Chen et al. 2021,
doi:10.12677/csa.2021.113052, Fig. 4; Grad-CAM: Selvaraju et al., ICCV 2017,
doi:10.1109/ICCV.2017.74).

An embedder has no class score, so the target is the length of the pooled descriptor before
L2 normalisation, `<pool(A), stop_grad(pool(A) / |pool(A)|)>`: its gradient with respect to the
attended feature map `A` says which positions push the descriptor where it points. The CAM is
`ReLU(sum_k alpha_k A^k)` with `alpha_k` the spatial mean of that gradient, as in Grad-CAM.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.embedder import Embedder

OVERLAY_MAX_SIDE = 512


def embedder_cam(net: Embedder, batch: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W preprocessed images -> B x h x w raw Grad-CAM maps (feature resolution)."""
    with torch.no_grad():
        features = net.feature_map(batch)
    with torch.enable_grad():
        fmap = features.detach().requires_grad_(True)
        pooled = net.pool(fmap)
        direction = F.normalize(pooled, p=2, dim=1).detach()
        target = (pooled * direction).sum()
        (grad,) = torch.autograd.grad(target, fmap)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * fmap.detach()).sum(dim=1))


def _colormap(grey: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB 'jet'-like ramp (blue, cyan, yellow, red) without importing matplotlib."""
    x = np.clip(grey, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], axis=-1)


def overlay_png(image: Image.Image, cam: torch.Tensor, alpha: float = 0.45) -> bytes:
    """Blend one h x w map (any scale) over the image as a colour heat-map; PNG bytes."""
    view = image.convert("RGB")
    if max(view.size) > OVERLAY_MAX_SIDE:
        view.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    width, height = view.size
    up = F.interpolate(cam[None, None].float(), size=(height, width), mode="bilinear")[0, 0]
    peak = float(up.max())
    grey = (up / peak).clamp(0, 1).cpu().numpy() if peak > 0 else np.zeros((height, width))
    base = np.asarray(view, dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * _colormap(grey)
    out = Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()
