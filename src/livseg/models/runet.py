"""R-U-Net: the residual U-Net of CR-U-Net (Liu et al. 2019), one level of the cascade.

Architecture (paper section II-A and Fig. 2):

- **Unit block** (:class:`~livseg.models.blocks.ResidualUnit`): three 3x3 convolution layers, each
  BatchNorm -> ReLU -> Conv -> Dropout in the pre-activation order of He et al. 2016, with an
  identity shortcut (1x1 projection when the channel count changes) around the three layers.
- **Down block**: unit block, then 2x2 max-pool. Its skip output is the unit block's output, i.e.
  the 3rd convolution *after* the residual addition and *before* pooling. (The paper says the
  deconvolution "should be connected to the 3rd convolution layer" of the same-level down block;
  the residual-block output is the natural tensor for that, and it is our choice.)
- **Bottom**: one unit block at the lowest resolution (no pooling).
- **Up block**: 2x2 stride-2 transposed convolution (halving the channels), concatenation with the
  same-level skip, unit block.
- **Head**: 1x1 convolution to ``out_channels`` logits (the paper's sigmoid lives in the losses
  and predictor).

Layer count. The paper says the depth-4 network has 35 layers and the depth-5 network 43. The one
counting we found that reproduces both numbers is 8 layers per level plus 3:

- per level, the down block's 3 convolutions + its max-pool (4) and the up block's
  deconvolution + 3 convolutions (4): 8 layers;
- plus the 3 convolutions of the bottom unit block;
- the 1x1 head (and the 1x1 projection shortcuts) not counted.

So ``8 * depth + 3``: 35 at depth 4, 43 at depth 5. The step of 8 between the two networks fixes
the per-level count: leaving the pools out gives a step of 7. Counting the head as well gives
36/44. The counting stays ambiguous only in how the constant 3 splits (a 3-conv bottom unit block
and no head, or a 2-conv bottom plus the head); the unit-block structure makes the first reading
the natural one, and it is what we build.
:attr:`RUNet.paper_layer_count` counts the actual modules that way.

Widths: the paper gives none. Default ``base_width=32`` (doubling per level: 32, 64, 128, 256,
512 at depth 4); width 16 suits CPU training at 256x256 or smaller. Dropout rate: not given by the
paper; default 0.1. Initialisation: Xavier (Glorot uniform) weights and biases 0.1, as in the paper.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from livseg.models.blocks import (
    ResidualUnit,
    check_input,
    check_positive,
    check_probability,
    network_in_channels,
)

logger = logging.getLogger("livseg.models.runet")

__all__ = ["RUNet"]


class RUNet(nn.Module):
    """Residual U-Net (one level of CR-U-Net) returning logits.

    Args:
        in_channels: Channels per slice (1 for a pre-processed CT slice; the CR-U-Net level 2 gets
            2: slice + level-1 mask).
        out_channels: Logit channels: 1 (sigmoid, paper) or 2 (softmax).
        depth: Number of down blocks (= up blocks): 4 for level 1, 5 for level 2.
        base_width: Channels of the first level, doubled per level. Not given by the paper:
            default 32.
        dropout: Dropout rate after each 3x3 convolution. Not given by the paper: default 0.1.
        context_slices: 2.5-D input: neighbouring slices on each side stacked as channels; the
            network takes ``in_channels * (2 * context_slices + 1)`` channels.
        bias_init: Initial value of every bias (paper: 0.1).

    Shapes:
        input (B, in_channels * (2 * context_slices + 1), H, W), H and W divisible by
        ``2**depth``; output logits (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        base_width: int = 32,
        dropout: float = 0.1,
        context_slices: int = 0,
        bias_init: float = 0.1,
    ) -> None:
        super().__init__()
        check_positive("depth", depth)
        check_positive("base_width", base_width)
        check_positive("out_channels", out_channels)
        check_probability("dropout", dropout)
        self.depth = depth
        self.in_channels = network_in_channels(in_channels, context_slices)
        self.out_channels = out_channels
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = self.in_channels
        for w in widths[:-1]:
            self.down.append(ResidualUnit(cin, w, dropout))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = ResidualUnit(widths[-2], widths[-1], dropout)
        self.deconvs = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            self.deconvs.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.up.append(ResidualUnit(2 * widths[i], widths[i], dropout))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self._init_weights(bias_init)

    def _init_weights(self, bias_init: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, bias_init)

    @property
    def paper_layer_count(self) -> int:
        """Layers as the paper counts them: 3x3 convs + max-pools + transposed convs.

        Counts the modules actually used by :meth:`forward` (the shared max-pool once per down
        block); the 1x1 head and 1x1 projection shortcuts are not counted. Equals
        ``8 * depth + 3``: 35 at depth 4, 43 at depth 5 (see the module docstring).
        """
        convs = sum(
            1 for m in self.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
        )
        deconvs = sum(1 for m in self.modules() if isinstance(m, nn.ConvTranspose2d))
        pools = len(self.down)
        return convs + deconvs + pools

    def forward(self, x: Tensor) -> Tensor:
        """Segment slices.

        Args:
            x: (B, C_in, H, W) float, H and W divisible by ``2**depth``.

        Returns:
            Logits (B, out_channels, H, W).
        """
        check_input(x, self.in_channels, 2**self.depth, f"RUNet(depth={self.depth})")
        skips: list[Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for deconv, block, skip in zip(self.deconvs, self.up, reversed(skips), strict=True):
            x = block(torch.cat([skip, deconv(x)], dim=1))
        return self.head(x)
