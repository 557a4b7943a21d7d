"""CR-U-Net (Liu et al. 2019): two cascaded R-U-Nets with a morphological intermediate step.

Pipeline (paper section II-A, Fig. 1)::

    x ──> level 1 (R-U-Net, depth 4) ──> sigmoid ──> > 0.5 ──> closing(r) ──> opening(r) ──> mask
    [x, mask] ──> level 2 (R-U-Net, depth 5) ──> logits

The disk radius is 5 px at 512x512 and scales with the working size:
``r = max(1, floor(5 * size / 512 + 0.5))`` with ``size`` the larger slice side (so 5 at 512, 3 at
256, 1 at 128). The paper says closing fills holes inside the liver and opening removes specks
outside it, and lists "an opening ... and a closing"; we apply closing first, then opening (SPEC).

Morphology runs on tensors (disk = rows of horizontal max-pools) on whatever device the model is on, batched,
without gradients. Borders: the mask is edge-replicated by ``2r`` before the operations and cropped
back afterwards, so closing never eats into a liver cut by the image border, and opening never
treats the border as background.

Level-2 input (the paper only says the processed output "is employed as a new input"):

- ``level2_input="concat"`` (default): the input slice(s) concatenated with the processed level-1
  mask, ``C_in + 1`` channels;
- ``level2_input="masked"``: the input slice(s) multiplied by the processed mask dilated by a disk
  of ``mask_dilation`` px at 512 (scaled like the morphology radius; not given by the paper:
  default 5), ``C_in`` channels.

Paper Table I variants: (a) ``level2_depth=4``; (b) ``intermediate=False`` - the level-1 sigmoid
thresholded at 0.5, without closing/opening (our choice: the thresholded mask rather than the raw
probability, so level 2 always sees a binary mask); (c) Dice loss and (d) MDice loss are chosen in
the loss, not here.

Stages: :meth:`CRUNet.set_stage` selects what ``forward`` returns: ``"full"`` (default) the
cascade's level-2 logits, ``"level1"`` level 1's logits (a checkpoint written during level-1
training, whose level 2 is untrained). The morphology is not differentiable, so the cascade
trains level by level; that staged training (freezing, level-1 masks, level-2 data) lives in
:mod:`livseg.train.staging`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from livseg.models.blocks import (
    InputSizeError,
    ModelOptionError,
    check_input,
    check_positive,
    foreground_probability,
    network_in_channels,
)
from livseg.models.runet import RUNet

logger = logging.getLogger("livseg.models.crunet")

__all__ = [
    "CRUNet",
    "scaled_radius",
    "disk_kernel",
    "binary_dilation",
    "binary_erosion",
    "binary_closing",
    "binary_opening",
]

STAGES: tuple[str, ...] = ("full", "level1")
LEVEL2_INPUTS: tuple[str, ...] = ("concat", "masked")


def scaled_radius(radius: float, size: int, reference_size: int = 512) -> int:
    """A structuring-element radius given at ``reference_size`` px, scaled to ``size`` px.

    Args:
        radius: Radius in pixels at ``reference_size`` (paper: 5 at 512).
        size: Working slice size in pixels.
        reference_size: Size the radius refers to.

    Returns:
        ``max(1, floor(radius * size / reference_size + 0.5))`` (rounds halves up).
    """
    return max(1, int(math.floor(radius * size / reference_size + 0.5)))


def disk_kernel(radius: int, device: torch.device | None = None) -> Tensor:
    """Disk structuring element ``x^2 + y^2 <= r^2`` (as ``skimage.morphology.disk``).

    Returns:
        float32 tensor (2r+1, 2r+1) of 0/1.
    """
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).to(torch.float32)


def _as_mask(mask: Tensor) -> Tensor:
    """(B, H, W) or (B, 1, H, W) -> float32 (B, 1, H, W) of 0/1."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise InputSizeError(
            f"a mask must be (B, H, W) or (B, 1, H, W); got shape {tuple(mask.shape)}"
        )
    return (mask > 0.5).to(torch.float32) if mask.dtype != torch.bool else mask.float()


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Dilation of a 0/1 float (B, 1, H, W) mask by a disk; outside the image is background.

    The disk is decomposed into its rows: for each row offset ``dy`` a horizontal max-pool of
    half-width ``floor(sqrt(r^2 - dy^2))`` on the mask shifted by ``dy``; the maximum over the rows
    is the dilation. Exact for binary masks, and much faster than a conv2d with a disk kernel on
    CPU.
    """
    h = mask.shape[-2]
    padded = F.pad(mask, (0, 0, radius, radius))
    out = torch.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        rows = padded[..., radius + dy : radius + dy + h, :]
        pooled = F.max_pool2d(rows, (1, 2 * half + 1), stride=1, padding=(0, half))
        out = torch.maximum(out, pooled)
    return out


def _erode(mask: Tensor, radius: int) -> Tensor:
    """Erosion of a 0/1 float (B, 1, H, W) mask by a disk; outside the image is foreground."""
    return 1.0 - _dilate(1.0 - mask, radius)


def binary_dilation(mask: Tensor, radius: int) -> Tensor:
    """Dilation by a disk; pixels outside the image count as background.

    Args:
        mask: (B, H, W) or (B, 1, H, W), binary (bool or 0/1 float).
        radius: Disk radius in pixels (>= 0).

    Returns:
        float32 (B, 1, H, W) of 0/1.
    """
    m = _as_mask(mask)
    if radius <= 0:
        return m
    with torch.no_grad():
        return _dilate(m, radius)


def binary_erosion(mask: Tensor, radius: int) -> Tensor:
    """Erosion by a disk; pixels outside the image count as foreground (no border erosion).

    Args:
        mask: (B, H, W) or (B, 1, H, W), binary.
        radius: Disk radius in pixels (>= 0).

    Returns:
        float32 (B, 1, H, W) of 0/1.
    """
    m = _as_mask(mask)
    if radius <= 0:
        return m
    with torch.no_grad():
        return _erode(m, radius)


def _closing_or_opening(mask: Tensor, radius: int, closing: bool) -> Tensor:
    m = _as_mask(mask)
    if radius <= 0:
        return m
    with torch.no_grad():
        pad = 2 * radius
        canvas = F.pad(m, (pad,) * 4, mode="replicate")
        if closing:
            canvas = _erode(_dilate(canvas, radius), radius)
        else:
            canvas = _dilate(_erode(canvas, radius), radius)
        return canvas[..., pad:-pad, pad:-pad]


def binary_closing(mask: Tensor, radius: int) -> Tensor:
    """Closing (dilation then erosion) by a disk, with edge-replicated borders.

    Fills holes and gaps narrower than the disk. Extensive: the result contains the input, also at
    the image border.

    Args:
        mask: (B, H, W) or (B, 1, H, W), binary.
        radius: Disk radius in pixels.

    Returns:
        float32 (B, 1, H, W) of 0/1.
    """
    return _closing_or_opening(mask, radius, closing=True)


def binary_opening(mask: Tensor, radius: int) -> Tensor:
    """Opening (erosion then dilation) by a disk, with edge-replicated borders.

    Removes specks and spurs narrower than the disk. Anti-extensive: the result is inside the input.

    Args:
        mask: (B, H, W) or (B, 1, H, W), binary.
        radius: Disk radius in pixels.

    Returns:
        float32 (B, 1, H, W) of 0/1.
    """
    return _closing_or_opening(mask, radius, closing=False)


class CRUNet(nn.Module):
    """Cascade of two R-U-Nets with the morphological intermediate step; returns level-2 logits.

    Args:
        in_channels: Channels per slice (1: the pre-processed CT slice).
        out_channels: Logit channels of both levels: 1 (sigmoid, paper) or 2 (softmax).
        level1_depth: Down blocks of level 1 (paper: 4, "35 layers").
        level2_depth: Down blocks of level 2 (paper: 5, "43 layers"; 4 = variant (a)).
        base_width: Base width of both levels. Not given by the paper: default 32.
        level2_base_width: Base width of level 2 if different (default: ``base_width``).
        dropout: Dropout rate of both levels. Not given by the paper: default 0.1.
        context_slices: 2.5-D input: neighbouring slices on each side stacked as channels.
        intermediate: Closing then opening between the levels (False = variant (b): the
            thresholded level-1 mask is passed on unchanged).
        level2_input: ``"concat"`` (slice + mask, default) or ``"masked"`` (slice x dilated mask).
        morph_radius: Closing/opening disk radius in px at ``reference_size`` (paper: 5).
        mask_dilation: Dilation radius (px at ``reference_size``) of the mask for ``"masked"``
            input. Not given by the paper: default 5.
        reference_size: Slice size the radii refer to (512).
        threshold: Threshold on the level-1 probability (paper: 0.5); foreground is ``p > t``.
        bias_init: Initial bias of every convolution (paper: 0.1).
        stage: ``"full"`` or ``"level1"``; see :meth:`set_stage`.

    Shapes:
        input (B, in_channels * (2 * context_slices + 1), H, W), H and W divisible by
        ``2**max(level1_depth, level2_depth)``; output logits (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        level1_depth: int = 4,
        level2_depth: int = 5,
        base_width: int = 32,
        level2_base_width: int | None = None,
        dropout: float = 0.1,
        context_slices: int = 0,
        intermediate: bool = True,
        level2_input: str = "concat",
        morph_radius: float = 5.0,
        mask_dilation: float = 5.0,
        reference_size: int = 512,
        threshold: float = 0.5,
        bias_init: float = 0.1,
        stage: str = "full",
    ) -> None:
        super().__init__()
        if level2_input not in LEVEL2_INPUTS:
            raise ModelOptionError(
                f"level2_input must be one of {', '.join(LEVEL2_INPUTS)}; got {level2_input!r}"
            )
        if morph_radius < 0 or mask_dilation < 0:
            raise ModelOptionError(
                f"morph_radius and mask_dilation must be >= 0; got {morph_radius}, {mask_dilation}"
            )
        check_positive("reference_size", reference_size)
        if not 0.0 < threshold < 1.0:
            raise ModelOptionError(f"threshold must be in (0, 1); got {threshold}")
        self.in_channels = network_in_channels(in_channels, context_slices)
        self.out_channels = out_channels
        self.use_intermediate = bool(intermediate)
        self.level2_input_mode = level2_input
        self.morph_radius = float(morph_radius)
        self.mask_dilation = float(mask_dilation)
        self.reference_size = int(reference_size)
        self.threshold = float(threshold)
        self.level1 = RUNet(
            in_channels=self.in_channels,
            out_channels=out_channels,
            depth=level1_depth,
            base_width=base_width,
            dropout=dropout,
            bias_init=bias_init,
        )
        l2_in = self.in_channels + 1 if level2_input == "concat" else self.in_channels
        self.level2 = RUNet(
            in_channels=l2_in,
            out_channels=out_channels,
            depth=level2_depth,
            base_width=level2_base_width if level2_base_width is not None else base_width,
            dropout=dropout,
            bias_init=bias_init,
        )
        self.multiple = 2 ** max(level1_depth, level2_depth)
        self.stage: str = "full"
        self.set_stage(stage)

    def set_stage(self, stage: str) -> None:
        """Select what :meth:`forward` returns.

        Args:
            stage: ``"full"``: the cascade's level-2 logits (inference); ``"level1"``: level 1's
                logits (for a model whose level 2 is not trained yet).

        Raises:
            ModelOptionError: An unknown stage.
        """
        if stage not in STAGES:
            raise ModelOptionError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
        self.stage = stage

    def radius_px(self, size: int) -> int:
        """Closing/opening disk radius in pixels for slices of ``size`` px (larger side)."""
        return scaled_radius(self.morph_radius, size, self.reference_size)

    def intermediate(self, prob1: Tensor) -> Tensor:
        """The intermediate processing: threshold, then closing and opening by a disk.

        Not differentiable (runs under ``torch.no_grad``); batched; on the tensor's device.

        Args:
            prob1: Level-1 foreground probability, (B, H, W) or (B, 1, H, W), in [0, 1].

        Returns:
            Processed binary mask, float32 (B, 1, H, W) of 0/1. With ``intermediate=False`` the
            thresholded mask without morphology.
        """
        with torch.no_grad():
            if prob1.dim() == 3:
                prob1 = prob1[:, None]
            mask = (prob1 > self.threshold).float()
            if not self.use_intermediate:
                return _as_mask(mask)
            r = self.radius_px(max(int(mask.shape[-2]), int(mask.shape[-1])))
            return binary_opening(binary_closing(mask, r), r)

    def level2_input(self, x: Tensor, mask: Tensor) -> Tensor:
        """Build the level-2 input from the network input and the processed level-1 mask.

        Args:
            x: Network input (B, C_in, H, W).
            mask: Processed mask (B, H, W) or (B, 1, H, W), 0/1.

        Returns:
            ``"concat"``: (B, C_in + 1, H, W); ``"masked"``: (B, C_in, H, W), ``x`` times the
            dilated mask.
        """
        m = _as_mask(mask).to(x.dtype)
        if self.level2_input_mode == "concat":
            return torch.cat([x, m], dim=1)
        r = scaled_radius(self.mask_dilation, max(x.shape[-2], x.shape[-1]), self.reference_size)
        return x * binary_dilation(m, r if self.mask_dilation > 0 else 0).to(x.dtype)

    def _check(self, x: Tensor) -> None:
        check_input(x, self.in_channels, self.multiple, "CRUNet")

    def forward_both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run both levels.

        Args:
            x: (B, C_in, H, W), H and W divisible by ``2**max(depths)``.

        Returns:
            ``(logits1, logits2)``, each (B, out_channels, H, W). Gradients reach level 1 only
            through ``logits1`` (the intermediate mask is not differentiable).
        """
        self._check(x)
        logits1 = self.level1(x)
        mask = self.intermediate(foreground_probability(logits1.detach()))
        logits2 = self.level2(self.level2_input(x, mask))
        return logits1, logits2

    def forward(self, x: Tensor) -> Tensor:
        """Segment slices.

        Args:
            x: (B, C_in, H, W), H and W divisible by ``2**max(level1_depth, level2_depth)``.

        Returns:
            Logits (B, out_channels, H, W): level 2's, or level 1's at stage ``"level1"``.
        """
        if self.stage == "level1":
            check_input(x, self.in_channels, 2**self.level1.depth, "CRUNet.level1")
            return self.level1(x)
        return self.forward_both(x)[1]
