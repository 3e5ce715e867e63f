"""CBAM (Woo et al. 2018) as in section 3.2.3 of the paper: channel, then spatial attention."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """σ(MLP(AvgPool(F)) + MLP(MaxPool(F))), one MLP shared by both descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        mx = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """σ(BN(conv7×7([AvgPool_c(F); MaxPool_c(F)]))): channel-wise mean and max maps.

    The batch normalisation before the sigmoid is in Woo et al.'s reference code (``BasicConv``
    with ``bn=True``), though not in the paper's Equation (3). Without it the gate dies: the
    channel-wise max of ReLU features is large and unnormalised, and in our first CPU training
    the gate after layer2 saturated at σ ≈ 4e-5 everywhere — zero gradient, so it never
    recovered, and every FPN level above P2 lost its input (large slides went undetected).
    """

    def __init__(self, kernel_size: int = 7, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(1) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(desc)))


class CBAM(nn.Module):
    """F' = Mc(F) ⊗ F, then F'' = Ms(F') ⊗ F'."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, spatial_bn: bool = True) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size, bn=spatial_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
