"""Contrastive loss on descriptor pairs, as Chen et al. (2021, doi:10.12677/csa.2021.113052) take
it from Radenovic, Tolias and Chum (TPAMI 2019, doi:10.1109/TPAMI.2018.2846566)."""

from __future__ import annotations

import torch


def contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 0.7
) -> torch.Tensor:
    """Mean over pairs of 0.5*d^2 for positives and 0.5*max(0, margin - d)^2 for negatives.

    a, b: N x D descriptors; same: N booleans (True when the pair shares a class).
    """
    distance = torch.linalg.vector_norm(a - b, dim=1)
    positive = 0.5 * distance.pow(2)
    negative = 0.5 * torch.clamp(margin - distance, min=0).pow(2)
    return torch.where(same.bool(), positive, negative).mean()
