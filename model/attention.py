"""Position and channel attention of the dual-attention embedder (Chen, Wang, Chen, Qiu and He,
2021, doi:10.12677/csa.2021.113052), after DANet (Fu et al., CVPR 2019,
doi:10.1109/CVPR.2019.00326, arXiv:1809.02983).

Both add a learned multiple (alpha, beta, initialised to 0) of the attended map to the input,
so at initialisation they are the identity and training starts from the plain backbone.
"""

from __future__ import annotations

import torch
from torch import nn


class PositionAttention(nn.Module):
    """Spatial self-attention: P_j = alpha * sum_i s_ji L_i + I_j with S = softmax(J^T K).

    The paper keeps C channels for J and K; DANet reduces them to C/`reduction` (default 8, as
    DANet) which makes the N x N product affordable. `reduction=1` gives the paper's variant.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        q = self.query(x).view(b, -1, n).transpose(1, 2)  # B x N x C'
        k = self.key(x).view(b, -1, n)  # B x C' x N
        attention = torch.softmax(torch.bmm(q, k), dim=-1)  # B x N x N, rows: query position
        v = self.value(x).view(b, c, n)  # B x C x N
        out = torch.bmm(v, attention.transpose(1, 2)).view(b, c, h, w)
        return self.alpha * out + x


class ChannelAttention(nn.Module):
    """Channel self-attention without convolutions: Q_j = beta * sum_i x_ji I_i + I_j."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.view(b, c, -1)  # B x C x N
        # X = softmax(I I^T), as the paper writes it (DANet instead uses max - energy).
        attention = torch.softmax(torch.bmm(flat, flat.transpose(1, 2)), dim=-1)  # B x C x C
        out = torch.bmm(attention, flat).view(b, c, h, w)
        return self.beta * out + x


class DualAttention(nn.Module):
    """Position and channel attention in parallel, summed, then one fusion conv (C -> C)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.position = PositionAttention(channels, reduction)
        self.channel = ChannelAttention()
        self.fusion = nn.Conv2d(channels, channels, kernel_size=1)
        # The fusion conv starts as half the identity: P + Q = 2I at init, so the whole block is
        # the identity and training starts from the plain backbone's features.
        assert self.fusion.bias is not None
        nn.init.zeros_(self.fusion.bias)
        with torch.no_grad():
            self.fusion.weight.copy_(0.5 * torch.eye(channels).view(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.position(x) + self.channel(x))
