"""Center loss (Wen, Zhang, Li and Qiao, ECCV 2016,
doi:10.1007/978-3-319-46478-7_31), as DDRL-AM uses it on the fused feature.

The centers are parameters of this module but are meant to be stepped by their own SGD
(DDRL-AM: lr 0.5), separate from the network's optimiser; `center_optimizer` builds it.
"""

from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    """`L_c = 0.5 * mean_i ||x_i - c_{y_i}||^2` over a batch (sum over feature dimensions)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(num_classes, dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        chosen = self.centers.index_select(0, labels)
        return 0.5 * (features - chosen).pow(2).sum(dim=1).mean()


def center_optimizer(loss: CenterLoss, lr: float = 0.5) -> torch.optim.SGD:
    """Plain SGD on the centers alone: each step moves a class's center toward its batch mean."""
    return torch.optim.SGD(loss.parameters(), lr=lr)
