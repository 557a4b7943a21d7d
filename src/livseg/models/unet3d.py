"""A compact 3-D U-Net for the coarse liver stage (whole CT at about 3-4 mm).

The 2-D paper models see one axial slice: heart, right kidney and bowel look like liver there. A
3-D network on the whole CT at low resolution sees the anatomy around the liver and places it; the
fine 2-D stage then only runs inside the region it finds (:mod:`livseg.infer.coarse`).

Design (nnU-Net's 3-D U-Net, made small for CPU): each level is two (3x3x3 conv -> instance norm
-> leaky ReLU) layers; down-sampling by a stride-2 3x3x3 convolution (the first conv of the next
level); up-sampling by a 2x2x2 stride-2 transposed convolution, concatenation with the encoder
output of the same level, two conv layers; a 1x1x1 head. Instance norm rather than batch norm:
batches of 1-2 volumes make batch statistics useless.

Shapes: input (B, C, D, H, W) with D, H, W divisible by ``2**depth``; logits (B, out, D, H, W).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from livseg.models.blocks import check_input, check_positive

logger = logging.getLogger("livseg.models.unet3d")

__all__ = ["UNet3D", "ConvNormAct3d"]


class ConvNormAct3d(nn.Sequential):
    """3x3x3 conv -> InstanceNorm3d (affine) -> LeakyReLU(0.01), nnU-Net's 3-D layer.

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D/stride, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


def _level(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Two conv layers; the first one strided when the level down-samples."""
    return nn.Sequential(
        ConvNormAct3d(in_channels, out_channels, stride),
        ConvNormAct3d(out_channels, out_channels),
    )


class UNet3D(nn.Module):
    """3-D U-Net returning logits, for whole CT volumes at coarse resolution.

    Args:
        in_channels: Input channels (1: the windowed CT).
        out_channels: Logit channels: 1 (sigmoid, default) or 2 (softmax).
        depth: Number of down-sampling steps.
        base_width: Channels at full resolution, doubled per level up to ``max_width``.
        max_width: Upper bound of the channels per level.

    Shapes:
        input (B, in_channels, D, H, W), each of D, H, W divisible by ``2**depth``;
        output logits (B, out_channels, D, H, W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        base_width: int = 8,
        max_width: int = 128,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("depth", depth),
            ("base_width", base_width),
            ("max_width", max_width),
        ):
            check_positive(name, value)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        widths = [min(base_width * 2**i, max_width) for i in range(depth + 1)]
        self.encoders = nn.ModuleList([_level(in_channels, widths[0], 1)])
        for i in range(1, depth + 1):
            self.encoders.append(_level(widths[i - 1], widths[i], 2))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(_level(2 * widths[i], widths[i], 1))
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(m.weight, a=0.01, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Segment volumes.

        Args:
            x: (B, C_in, D, H, W) float, D, H and W divisible by ``2**depth``.

        Returns:
            Logits (B, out_channels, D, H, W).
        """
        check_input(x, self.in_channels, 2**self.depth, f"UNet3D(depth={self.depth})", dims=3)
        skips: list[Tensor] = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        skips.pop()  # the bottom level's output is x itself
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)
