"""Center loss (Wen, Zhang, Li and Qiao, ECCV 2016,
doi:10.1007/978-3-319-46478-7_31), as DDRL-AM uses it on the fused feature.

The centers are not trained by the network's optimiser: after each step they follow Wen et
al.'s update (their Eq. 4), `c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)`,
with n_j the batch's images of class j (DDRL-AM: alpha = 0.5). Each center thus moves
alpha * n_j / (1 + n_j) of the way to its class's batch mean, whatever the batch size. Plain
SGD on the batch-mean loss moves it only alpha * n_j / B of the way: with 21 classes in a batch
of 64 the centers lagged twenty times behind, and the loss pulled the features toward stale
centers instead (DDRL-AM's training accuracy fell during its step 2).
"""

from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    """`L_c = 0.5 * mean_i ||x_i - c_{y_i}||^2` over a batch (sum over feature dimensions)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(num_classes, dim), requires_grad=False)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        chosen = self.centers.index_select(0, labels)
        return 0.5 * (features - chosen).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> None:
        """Wen et al.'s center update for one batch (features detached from the graph)."""
        centers = self.centers
        diff = centers.index_select(0, labels) - features.to(centers.dtype)
        total = torch.zeros_like(centers).index_add_(0, labels, diff)
        counts = torch.bincount(labels, minlength=centers.shape[0]).to(centers.dtype)
        centers.sub_(alpha * total / (1.0 + counts).unsqueeze(1))
