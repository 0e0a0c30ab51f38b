"""Global pooling of a feature map to one vector: GeM, SPoC (average) and MAC (max).

Pure functions, as in cnnimageretrieval-pytorch, with thin modules over them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over positions: (mean x^p)^(1/p). x is B x C x H x W -> B x C."""
    return F.avg_pool2d(x.clamp(min=eps).pow(p), (x.size(-2), x.size(-1))).pow(1.0 / p).flatten(1)


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooling (average) of convolutions: GeM with p = 1."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: GeM as p -> infinity."""
    return F.adaptive_max_pool2d(x, 1).flatten(1)


class GeM(nn.Module):
    """GeM pooling with a learned exponent p (initialised to 3; Radenovic, Tolias and Chum,
    TPAMI 2019, doi:10.1109/TPAMI.2018.2846566)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)


class SPoC(nn.Module):
    """Average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class MAC(nn.Module):
    """Max pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


POOLINGS: dict[str, type[nn.Module]] = {"gem": GeM, "spoc": SPoC, "mac": MAC}


def make_pooling(name: str) -> nn.Module:
    """A pooling module by name; an unknown name lists the valid ones."""
    try:
        return POOLINGS[name]()
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLINGS)}") from None
