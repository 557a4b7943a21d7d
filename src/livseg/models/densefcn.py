"""DenseFCN of Kaluva et al. (2017): a fully-convolutional DenseNet without skip connections.

Architecture (paper section II-B1, Fig. 1, Table IV). Values the extracted paper text lost are
options marked "not given by the paper" with our defaults (SPEC section 2).

- First layer: 3x3 convolution with ``first_filters`` maps (not given by the paper: 48).
- Down path, per level: dense block of ``layers_per_block`` layers (4), each
  BatchNorm -> ELU -> 3x3 conv (``growth`` maps, not given: 16) -> Dropout (not given: 0.2); the
  block's input is concatenated with its output (linear growth of the maps); then Transition Down
  = BatchNorm -> ELU -> 1x1 conv (channels kept) -> Dropout -> 2x2 max-pool. ``levels`` Transition
  Downs (not given: 4).
- Bottleneck: one more dense block at the lowest resolution, the last block of the down path, so
  (our reading) its input is concatenated with its output too.
- Up path, per level: Transition Up = bilinear x2 -> 3x3 conv (channels kept) -> BatchNorm
  (-> ELU if ``tu_elu``; Table IV lists no ELU, the text mentions one: default False), then a dense
  block whose input is *not* concatenated with its output (``layers_per_block * growth`` maps).
  No skip connections from the down path.
- Optional spatial bilinear up-sampling block (SBU, ``sbu=True``): bilinear x2 of the last feature
  maps, for the liver model that takes 256x256 slices and predicts at 512x512.
- Head: 1x1 convolution to ``out_channels`` (2 classes, softmax in the losses/predictor).

Initialisation (not given by the paper): He uniform conv weights (as in the Tiramisu), biases 0.

Liver model: ``in_channels=1, sbu=True`` at 256x256. Tumour model: ``in_channels=3`` (three HU
windows), ``sbu=False`` at 512x512.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn
from torch.nn import functional as F

from livseg.models.blocks import (
    DenseBlock,
    TransitionDown,
    TransitionUp,
    check_input,
    check_positive,
    check_probability,
    network_in_channels,
)

logger = logging.getLogger("livseg.models.densefcn")

__all__ = ["DenseFCN"]


class DenseFCN(nn.Module):
    """Fully-convolutional DenseNet without skip connections (Kaluva et al. 2017), logits out.

    Args:
        in_channels: Channels per slice: 1 (liver model) or 3 (tumour model, three HU windows).
        out_channels: Logit channels (paper: 2, softmax).
        levels: Number of Transition Downs (= Transition Ups). Not given by the paper: 4.
        growth: Growth rate k, maps added per dense layer. Not given by the paper: 16.
        layers_per_block: Layers per dense block (paper: 4).
        first_filters: Filters of the first 3x3 convolution. Not given by the paper: 48.
        dropout: Dropout rate after the dense-layer and Transition-Down convolutions. Not given by
            the paper: 0.2.
        sbu: Append the spatial bilinear up-sampling block: output is 2H x 2W (liver model).
        tu_elu: ELU after the Transition Up's BatchNorm (Table IV has none: default False).
        context_slices: 2.5-D input: neighbouring slices on each side stacked as channels; the
            network takes ``in_channels * (2 * context_slices + 1)`` channels.

    Shapes:
        input (B, in_channels * (2 * context_slices + 1), H, W), H and W divisible by
        ``2**levels``; output logits (B, out_channels, H, W), or (B, out_channels, 2H, 2W) with
        ``sbu=True``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        levels: int = 4,
        growth: int = 16,
        layers_per_block: int = 4,
        first_filters: int = 48,
        dropout: float = 0.2,
        sbu: bool = False,
        tu_elu: bool = False,
        context_slices: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("levels", levels),
            ("growth", growth),
            ("layers_per_block", layers_per_block),
            ("first_filters", first_filters),
            ("out_channels", out_channels),
        ):
            check_positive(name, value)
        check_probability("dropout", dropout)
        self.levels = levels
        self.in_channels = network_in_channels(in_channels, context_slices)
        self.out_channels = out_channels
        self.sbu = bool(sbu)
        self.first = nn.Conv2d(self.in_channels, first_filters, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        c = first_filters
        for _ in range(levels):
            block = DenseBlock(c, layers_per_block, growth, dropout, keep_input=True)
            self.down_blocks.append(block)
            c = block.out_channels
            self.transitions_down.append(TransitionDown(c, dropout))
        self.bottleneck = DenseBlock(c, layers_per_block, growth, dropout, keep_input=True)
        c = self.bottleneck.out_channels
        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for _ in range(levels):
            self.transitions_up.append(TransitionUp(c, c, elu=tu_elu))
            block = DenseBlock(c, layers_per_block, growth, dropout, keep_input=False)
            self.up_blocks.append(block)
            c = block.out_channels
        self.head = nn.Conv2d(c, out_channels, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Segment slices.

        Args:
            x: (B, C_in, H, W) float, H and W divisible by ``2**levels``.

        Returns:
            Logits (B, out_channels, H, W), or (B, out_channels, 2H, 2W) with ``sbu``.
        """
        check_input(x, self.in_channels, 2**self.levels, f"DenseFCN(levels={self.levels})")
        x = self.first(x)
        for block, td in zip(self.down_blocks, self.transitions_down, strict=True):
            x = td(block(x))
        x = self.bottleneck(x)
        for tu, block in zip(self.transitions_up, self.up_blocks, strict=True):
            x = block(tu(x))
        if self.sbu:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.head(x)
