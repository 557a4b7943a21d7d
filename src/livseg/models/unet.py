"""The baseline U-Net of the CR-U-Net paper's Table I (Ronneberger et al. 2015), in 2-D.

Each level: two 3x3 conv + ReLU (optional BatchNorm, absent in the original); 2x2 max-pool down;
2x2 stride-2 transposed convolution up (halving the channels); concatenation with the same-level
encoder output; two 3x3 conv + ReLU; a 1x1 conv head. Differences from the original, on purpose:
"same" padding (output size = input size, no cropping) and a configurable depth and width.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from livseg.models.blocks import (
    DoubleConv,
    check_input,
    check_positive,
    network_in_channels,
)

logger = logging.getLogger("livseg.models.unet")

__all__ = ["UNet"]


class UNet(nn.Module):
    """2-D U-Net (Ronneberger et al. 2015) returning logits.

    Args:
        in_channels: Channels per slice (1 for a CT slice).
        out_channels: Logit channels: 1 (sigmoid, default) or 2 (softmax).
        depth: Number of 2x2 max-pools (4 in the original).
        base_width: Channels at the first level, doubled per level (64 in the original).
        batch_norm: BatchNorm after each conv (not in the original; default False).
        context_slices: 2.5-D input: neighbouring slices on each side stacked as channels, so the
            network takes ``in_channels * (2 * context_slices + 1)`` channels.

    Shapes:
        input (B, in_channels * (2 * context_slices + 1), H, W), H and W divisible by
        ``2**depth``; output logits (B, out_channels, H, W).

    Initialisation: He (Kaiming) normal for conv weights as in Ronneberger et al., biases 0.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        base_width: int = 64,
        batch_norm: bool = False,
        context_slices: int = 0,
    ) -> None:
        super().__init__()
        check_positive("depth", depth)
        check_positive("base_width", base_width)
        check_positive("out_channels", out_channels)
        self.depth = depth
        self.in_channels = network_in_channels(in_channels, context_slices)
        self.out_channels = out_channels
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = self.in_channels
        for w in widths[:-1]:
            self.encoders.append(DoubleConv(cin, w, batch_norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1], batch_norm)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(DoubleConv(2 * widths[i], widths[i], batch_norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Segment slices.

        Args:
            x: (B, C_in, H, W) float, H and W divisible by ``2**depth``.

        Returns:
            Logits (B, out_channels, H, W).
        """
        check_input(x, self.in_channels, 2**self.depth, f"UNet(depth={self.depth})")
        skips: list[Tensor] = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)
