"""Building blocks shared by the livseg networks, and the checks every network runs on its input.

Tensor shapes follow PyTorch: (B, C, H, W) = (batch, channels, rows, columns), in pixels.

The blocks are:

- :class:`DoubleConv`: the U-Net baseline's two 3x3 conv + (BatchNorm) + ReLU layers.
- :class:`PreActConv` / :class:`ResidualUnit`: the R-U-Net unit block, three pre-activation layers
  (BatchNorm -> ReLU -> 3x3 conv -> Dropout, He et al. 2016 "Identity mappings") around an identity
  or 1x1-projection shortcut.
- :class:`DenseLayer` / :class:`DenseBlock` / :class:`TransitionDown` / :class:`TransitionUp`: the
  DenseFCN pieces of Kaluva et al.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from livseg.errors import LivsegError

logger = logging.getLogger("livseg.models.blocks")

__all__ = [
    "InputSizeError",
    "ModelOptionError",
    "nearest_valid_size",
    "check_input",
    "network_in_channels",
    "DoubleConv",
    "PreActConv",
    "ResidualUnit",
    "DenseLayer",
    "DenseBlock",
    "TransitionDown",
    "TransitionUp",
    "foreground_probability",
]


class InputSizeError(LivsegError, ValueError):
    """A tensor given to a network has the wrong rank, channel count or spatial size."""


class ModelOptionError(LivsegError, ValueError):
    """A model name or a model option is unknown or out of range."""


def nearest_valid_size(size: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``size`` (ties go up; never below ``multiple``).

    Args:
        size: A spatial size in pixels.
        multiple: The divisor the network needs, ``2**depth``.

    Returns:
        The nearest valid size in pixels.
    """
    lower = (size // multiple) * multiple
    upper = lower + multiple
    best = lower if (size - lower) < (upper - size) else upper
    return max(best, multiple)


def check_input(x: Tensor, in_channels: int, multiple: int, model: str, dims: int = 2) -> None:
    """Reject an input a network cannot take, naming the nearest valid size.

    Args:
        x: The network input, expected shape (B, in_channels, H, W), or (B, in_channels, D, H, W)
            for ``dims=3``.
        in_channels: The channel count the network was built for.
        multiple: Every spatial size must be divisible by this (``2**depth``).
        model: The network's name for the message (e.g. ``"RUNet(depth=4)"``).
        dims: Spatial dimensions the network takes (2 for slices, 3 for volumes).

    Raises:
        InputSizeError: Wrong rank, wrong channel count, or a spatial size not divisible by
            ``multiple``; the message gives the nearest valid size.
    """
    if x.dim() != dims + 2:
        axes = "(B, C, H, W)" if dims == 2 else "(B, C, D, H, W)"
        raise InputSizeError(
            f"{model} takes a {dims + 2}-D tensor {axes}; got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise InputSizeError(
            f"{model} was built for {in_channels} input channel(s); got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
    sizes = [int(s) for s in x.shape[2:]]
    if any(s % multiple for s in sizes):
        got = "x".join(str(s) for s in sizes)
        near = "x".join(str(nearest_valid_size(s, multiple)) for s in sizes)
        what = "H and W" if dims == 2 else "D, H and W"
        raise InputSizeError(
            f"{model} needs {what} divisible by {multiple}; got {got}. "
            f"Nearest valid size: {near} (pad or resize the input)."
        )


def network_in_channels(in_channels: int, context_slices: int) -> int:
    """Channels a network receives for 2.5-D input.

    With ``context_slices = c`` the network sees the slice and ``c`` neighbours on each side,
    stacked slice-major along the channel axis: channels ``[z-c, ..., z, ..., z+c]``, each slice
    contributing its ``in_channels`` channels (e.g. 3 HU windows for the tumour model).

    Args:
        in_channels: Channels per slice (>= 1).
        context_slices: Neighbouring slices on each side (>= 0).

    Returns:
        ``in_channels * (2 * context_slices + 1)``.

    Raises:
        ModelOptionError: A negative or zero count.
    """
    if in_channels < 1:
        raise ModelOptionError(f"in_channels must be >= 1; got {in_channels}")
    if context_slices < 0:
        raise ModelOptionError(f"context_slices must be >= 0; got {context_slices}")
    return in_channels * (2 * context_slices + 1)


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    """Raise :class:`ModelOptionError` unless ``value >= minimum`` (an integer option)."""
    if int(value) != value or value < minimum:
        raise ModelOptionError(f"{name} must be an integer >= {minimum}; got {value!r}")


def check_probability(name: str, value: float) -> None:
    """Raise :class:`ModelOptionError` unless ``0 <= value < 1`` (a dropout rate)."""
    if not 0.0 <= float(value) < 1.0:
        raise ModelOptionError(f"{name} must be in [0, 1); got {value!r}")


class DoubleConv(nn.Sequential):
    """Two (3x3 conv -> [BatchNorm] -> ReLU) layers, the U-Net level block (Ronneberger 2015).

    Padding is 1 ("same"), unlike the original's unpadded convolutions, so output size = input size.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers.append(nn.Conv2d(cin, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class PreActConv(nn.Sequential):
    """One pre-activation layer: BatchNorm -> ReLU -> 3x3 conv -> Dropout.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )


class ResidualUnit(nn.Module):
    """The R-U-Net unit block: three :class:`PreActConv` layers plus a shortcut.

    ``out = conv3(conv2(conv1(x))) + shortcut(x)``; the shortcut is the identity when the channel
    counts match, otherwise a 1x1 convolution (projection). Following He et al. (2016, "Identity
    mappings"), nothing is applied after the addition.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    n_layers = 3

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            PreActConv(in_channels, out_channels, dropout),
            PreActConv(out_channels, out_channels, dropout),
            PreActConv(out_channels, out_channels, dropout),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, bias=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Residual unit. x: (B, C_in, H, W) -> (B, C_out, H, W)."""
        return self.body(x) + self.shortcut(x)


class DenseLayer(nn.Sequential):
    """DenseFCN layer: BatchNorm -> ELU -> 3x3 conv (``growth`` maps) -> Dropout.

    Shapes: (B, in_channels, H, W) -> (B, growth, H, W).
    """

    def __init__(self, in_channels: int, growth: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ELU(inplace=False),
            nn.Conv2d(in_channels, growth, 3, padding=1, bias=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )


class DenseBlock(nn.Module):
    """A dense block: layer ``l`` sees the concatenation of the block input and all earlier layers.

    Args:
        in_channels: Channels of the block input.
        n_layers: Layers in the block (4 in Kaluva et al.).
        growth: Feature maps each layer adds (k).
        dropout: Dropout rate after each convolution.
        keep_input: If True (down path) the output is ``cat(input, new maps)`` with
            ``in_channels + n_layers * growth`` channels; if False (up path) only the new maps,
            ``n_layers * growth`` channels.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W) with ``out_channels`` as above.
    """

    def __init__(
        self, in_channels: int, n_layers: int, growth: int, dropout: float, keep_input: bool
    ) -> None:
        super().__init__()
        self.keep_input = keep_input
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth, growth, dropout) for i in range(n_layers)
        )
        self.out_channels = (in_channels if keep_input else 0) + n_layers * growth

    def forward(self, x: Tensor) -> Tensor:
        """Dense block. x: (B, C_in, H, W) -> (B, out_channels, H, W)."""
        features = x
        new: list[Tensor] = []
        for layer in self.layers:
            out = layer(features)
            new.append(out)
            features = torch.cat([features, out], dim=1)
        return features if self.keep_input else torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    """Transition Down: BatchNorm -> ELU -> 1x1 conv (channels kept) -> Dropout -> 2x2 max-pool.

    Shapes: (B, C, H, W) -> (B, C, H/2, W/2).
    """

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ELU(inplace=False),
            nn.Conv2d(channels, channels, 1, bias=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """Transition Up: bilinear x2 up-sampling -> 3x3 conv -> BatchNorm (-> ELU if ``elu``).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, elu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act: nn.Module = nn.ELU(inplace=False) if elu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Up-sample by 2. x: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.act(self.norm(self.conv(x)))


def foreground_probability(logits: Tensor) -> Tensor:
    """Foreground probability from binary-segmentation logits.

    Args:
        logits: (B, 1, *spatial) (sigmoid) or (B, 2, *spatial) (softmax; foreground = channel 1),
            with 2 or 3 spatial axes.

    Returns:
        Probabilities (B, *spatial) in [0, 1], same dtype and device as ``logits``.

    Raises:
        InputSizeError: Not 4-D or 5-D, or a channel count other than 1 or 2.
    """
    if logits.dim() not in (4, 5) or logits.shape[1] not in (1, 2):
        raise InputSizeError(
            "foreground_probability takes logits (B, 1 or 2, H, W) or (B, 1 or 2, D, H, W); "
            f"got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]
