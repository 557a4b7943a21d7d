"""Segmentation losses on logits: Dice, soft Dice, Tversky, MDice, weighted CE, compound tumour loss.

Every loss is a small ``nn.Module`` called as ``loss(logits, target, weight=None)``:

- ``logits``: (B, 1, H, W) (foreground probability = sigmoid) or (B, 2, H, W) (softmax,
  foreground = channel 1).
- ``target``: (B, H, W) or (B, 1, H, W), values in {0, 1} (bool, integer or float). LiTS labels
  must be binarised first (liver = label >= 1, tumour = label == 2).
- ``weight``: a per-pixel weight map (B, H, W) or (B, 1, H, W), used by the cross-entropy losses
  (:attr:`uses_weight` is True); the overlap losses accept it for a uniform call signature and do
  not use it.

Overlap losses sum over the pixels of each batch item, then average the per-item losses over the
batch, so one item's empty reference does not leak into another's (``reduction="none"`` returns
the (B,) per-item losses). With ``batch=True`` they sum over the whole batch instead (nnU-Net's
"batch Dice"): an item without foreground then still pays for its false positives, where per item
its loss is close to 1 whatever it predicts and gives almost no gradient. With p the foreground
probability and g the reference (SPEC section 1):

- :class:`DiceLoss` (Milletari et al., eq. 1 of CR-U-Net): ``1 - (2 sum(pg) + eps) /
  (sum(p^2) + sum(g^2) + eps)``.
- :class:`SoftDiceLoss`: ``1 - D``, ``D = (2 sum(pg) + eps) / (sum(p) + sum(g) + eps)``.
- :class:`TverskyLoss`: ``1 - T``, ``T = (sum(pg) + eps) / (sum(pg) + alpha sum(p(1-g))
  + beta sum((1-p)g) + eps)``; alpha weighs false positives, beta false negatives.
- :class:`MDiceLoss`: ``1 - D * T`` (CR-U-Net; alpha 0.5, beta 0.7, eps 1e-5). In [0, 1]; 0 on a
  perfect prediction.

Empty reference (sum(g) = 0): the eps terms make every overlap loss 0 when the prediction is empty
too and close to 1 when it is not.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from livseg.errors import LivsegError

logger = logging.getLogger("livseg.losses")

__all__ = [
    "LossInputError",
    "DiceLoss",
    "SoftDiceLoss",
    "TverskyLoss",
    "MDiceLoss",
    "WeightedCrossEntropyLoss",
    "CompoundTumourLoss",
    "class_weight_from_frequency",
    "LOSSES",
    "build_loss",
]

REDUCTIONS = ("mean", "none")


class LossInputError(LivsegError, ValueError):
    """A loss got tensors of the wrong shape or values, or a bad option."""


def _check_logits_target(logits: Tensor, target: Tensor) -> Tensor:
    """Validate shapes and values; return the target as float (B, *spatial).

    Slices (B, C, H, W) and volumes (B, C, D, H, W) are both accepted; the target has the
    logits' shape without the channel axis (or with a channel axis of 1).
    """
    if logits.dim() not in (4, 5) or logits.shape[1] not in (1, 2):
        raise LossInputError(
            "logits must be (B, 1 or 2, H, W) or (B, 1 or 2, D, H, W); "
            f"got shape {tuple(logits.shape)}"
        )
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    want = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != want:
        raise LossInputError(
            f"target must be {want} (or with a channel axis of 1) to match logits "
            f"{tuple(logits.shape)}; got shape {tuple(target.shape)}"
        )
    if target.dtype != torch.bool and bool(((target != 0) & (target != 1)).any()):
        raise LossInputError(
            "target values must be 0 or 1 (binarise LiTS labels first: liver = label >= 1, "
            "tumour = label == 2)"
        )
    return target.to(torch.float32)


def _check_weight(weight: Tensor | None, target: Tensor) -> Tensor | None:
    """Validate a weight map against a (B, *spatial) target; return float or None."""
    if weight is None:
        return None
    if weight.dim() == target.dim() + 1 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if weight.shape != target.shape:
        raise LossInputError(
            f"weight map must be {tuple(target.shape)} (or with a channel axis of 1); "
            f"got shape {tuple(weight.shape)}"
        )
    weight = weight.to(torch.float32)
    if bool((weight < 0).any()):
        raise LossInputError("weight map values must be >= 0")
    return weight


def _foreground(logits: Tensor) -> Tensor:
    """Foreground probability (B, H, W) in float32."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


def _reduce(per_item: Tensor, reduction: str) -> Tensor:
    return per_item.mean() if reduction == "mean" else per_item


def _check_options(eps: float, reduction: str) -> None:
    if not eps >= 0:
        raise LossInputError(f"eps must be >= 0; got {eps}")
    if reduction not in REDUCTIONS:
        raise LossInputError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise LossInputError(f"{name} must be in [0, 1]; got {value}")


class _OverlapLoss(nn.Module):
    """Base of the overlap losses: validation, per-item (or whole-batch) sums, batch mean."""

    uses_weight = False

    def __init__(self, eps: float = 1e-5, reduction: str = "mean", batch: bool = False) -> None:
        super().__init__()
        _check_options(eps, reduction)
        if batch and reduction != "mean":
            raise LossInputError("batch=True sums over the batch: it needs reduction='mean'")
        self.eps = float(eps)
        self.reduction = reduction
        self.batch = bool(batch)

    def per_item(self, p: Tensor, g: Tensor) -> Tensor:
        """Loss per batch item from flattened probabilities and reference, (B, N) -> (B,)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            logits: (B, 1, H, W) or (B, 2, H, W).
            target: (B, H, W) or (B, 1, H, W) in {0, 1}.
            weight: Ignored by overlap losses (accepted for a uniform signature).

        Returns:
            Scalar mean over the batch, or (B,) with ``reduction="none"``.
        """
        g = _check_logits_target(logits, target).flatten(1)
        p = _foreground(logits).flatten(1)
        if self.batch:
            p, g = p.reshape(1, -1), g.reshape(1, -1)
        return _reduce(self.per_item(p, g), self.reduction)


class DiceLoss(_OverlapLoss):
    """Milletari's Dice loss with squared denominators.

    ``1 - (2 sum(p g) + eps) / (sum(p^2) + sum(g^2) + eps)`` per batch item, then the batch mean.

    Args:
        eps: Smoothing term in numerator and denominator (>= 0).
        reduction: ``"mean"`` (scalar) or ``"none"`` ((B,) per item).
        batch: Sum over the whole batch (one loss per batch) instead of per item.
    """

    def per_item(self, p: Tensor, g: Tensor) -> Tensor:
        """(B, N) -> (B,) Milletari Dice loss."""
        inter = (p * g).sum(1)
        denom = (p * p).sum(1) + (g * g).sum(1)
        return 1.0 - (2.0 * inter + self.eps) / (denom + self.eps)


def dice_score(p: Tensor, g: Tensor, eps: float) -> Tensor:
    """Soft Dice score ``(2 sum(pg) + eps) / (sum(p) + sum(g) + eps)``; (B, N) -> (B,)."""
    return (2.0 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)


def tversky_index(p: Tensor, g: Tensor, alpha: float, beta: float, eps: float) -> Tensor:
    """Tversky index ``(TP + eps) / (TP + alpha FP + beta FN + eps)`` (soft); (B, N) -> (B,)."""
    tp = (p * g).sum(1)
    fp = (p * (1.0 - g)).sum(1)
    fn = ((1.0 - p) * g).sum(1)
    return (tp + eps) / (tp + alpha * fp + beta * fn + eps)


class SoftDiceLoss(_OverlapLoss):
    """Soft Dice loss ``1 - D``, ``D = (2 sum(pg) + eps) / (sum(p) + sum(g) + eps)``.

    Args:
        eps: Smoothing term (>= 0).
        reduction: ``"mean"`` or ``"none"``.
        batch: Sum over the whole batch (one loss per batch) instead of per item.
    """

    def per_item(self, p: Tensor, g: Tensor) -> Tensor:
        """(B, N) -> (B,) soft Dice loss."""
        return 1.0 - dice_score(p, g, self.eps)


class TverskyLoss(_OverlapLoss):
    """Tversky loss ``1 - T`` (Salehi et al. 2017).

    Args:
        alpha: Weight of false positives, in [0, 1] (default 0.5, the CR-U-Net value).
        beta: Weight of false negatives, in [0, 1] (default 0.7, the CR-U-Net value).
        eps: Smoothing term (>= 0).
        reduction: ``"mean"`` or ``"none"``.
        batch: Sum over the whole batch (one loss per batch) instead of per item.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.7,
        eps: float = 1e-5,
        reduction: str = "mean",
        batch: bool = False,
    ) -> None:
        super().__init__(eps, reduction, batch)
        _check_fraction("alpha", alpha)
        _check_fraction("beta", beta)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def per_item(self, p: Tensor, g: Tensor) -> Tensor:
        """(B, N) -> (B,) Tversky loss."""
        return 1.0 - tversky_index(p, g, self.alpha, self.beta, self.eps)


class MDiceLoss(TverskyLoss):
    """CR-U-Net's multiplicative Dice loss ``1 - D * T`` (paper eq. 4 as intended, SPEC).

    D is the soft Dice score and T the Tversky index, both with ``eps``. In [0, 1]; 0 on a
    perfect prediction.

    Args:
        alpha: Tversky false-positive weight (paper: 0.5).
        beta: Tversky false-negative weight (paper: 0.7).
        eps: Smoothing term (paper: 1e-5).
        reduction: ``"mean"`` or ``"none"``.
        batch: Sum over the whole batch (one loss per batch) instead of per item.
    """

    def per_item(self, p: Tensor, g: Tensor) -> Tensor:
        """(B, N) -> (B,) MDice loss."""
        d = dice_score(p, g, self.eps)
        t = tversky_index(p, g, self.alpha, self.beta, self.eps)
        return 1.0 - d * t


class WeightedCrossEntropyLoss(nn.Module):
    """Spatially weighted cross-entropy (Kaluva et al.; weight maps as in U-Net).

    Per pixel: binary cross-entropy with logits for (B, 1, H, W) logits, softmax cross-entropy for
    (B, 2, H, W); multiplied by the weight map (default all ones) and by the class weight of the
    pixel's reference class. Per batch item the weighted losses are averaged over the pixels
    (``normalize="mean"``) or divided by the sum of the weights (``normalize="weights"``); then
    the batch mean.

    Args:
        class_weights: ``(background, foreground)`` weights, or None for (1, 1).
        normalize: ``"mean"`` or ``"weights"``.
        reduction: ``"mean"`` or ``"none"``.
    """

    uses_weight = True

    def __init__(
        self,
        class_weights: tuple[float, float] | list[float] | None = None,
        normalize: str = "mean",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if class_weights is not None:
            if len(class_weights) != 2 or min(class_weights) < 0:
                raise LossInputError(
                    f"class_weights must be two values >= 0 (background, foreground); "
                    f"got {class_weights!r}"
                )
            class_weights = (float(class_weights[0]), float(class_weights[1]))
        if normalize not in ("mean", "weights"):
            raise LossInputError(f"normalize must be 'mean' or 'weights'; got {normalize!r}")
        _check_options(0.0, reduction)
        self.class_weights = class_weights
        self.normalize = normalize
        self.reduction = reduction

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        class_weights: tuple[float, float] | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            logits: (B, 1, H, W) or (B, 2, H, W).
            target: (B, H, W) or (B, 1, H, W) in {0, 1}.
            weight: Per-pixel weights (B, H, W) or (B, 1, H, W), >= 0; None = ones.
            class_weights: Overrides the constructor's class weights for this call.

        Returns:
            Scalar mean over the batch, or (B,) with ``reduction="none"``.
        """
        g = _check_logits_target(logits, target)
        w = _check_weight(weight, g)
        logits = logits.float()
        if logits.shape[1] == 1:
            ce = F.binary_cross_entropy_with_logits(logits[:, 0], g, reduction="none")
        else:
            ce = F.cross_entropy(logits, g.long(), reduction="none")
        if w is None:
            w = torch.ones_like(ce)
        cw = class_weights if class_weights is not None else self.class_weights
        if cw is not None:
            w = w * (cw[0] * (1.0 - g) + cw[1] * g)
        weighted = (w * ce).flatten(1)
        if self.normalize == "mean":
            per_item = weighted.mean(1)
        else:
            per_item = weighted.sum(1) / w.flatten(1).sum(1).clamp_min(1e-12)
        return _reduce(per_item, self.reduction)


def class_weight_from_frequency(target: Tensor | np.ndarray, max_weight: float = 100.0) -> float:
    """Foreground class weight from the class frequency: ``n_background / n_foreground``.

    Args:
        target: Binary reference of any shape (tensor or array), e.g. all training tumour masks.
        max_weight: Upper bound of the weight (also used when there is no foreground).

    Returns:
        The weight, clamped to ``[1, max_weight]``.
    """
    if isinstance(target, Tensor):
        n_fg = int((target > 0).sum().item())
        n = int(target.numel())
    else:
        arr = np.asarray(target)
        n_fg = int(np.count_nonzero(arr))
        n = int(arr.size)
    if n_fg == 0:
        return float(max_weight)
    return float(min(max((n - n_fg) / n_fg, 1.0), max_weight))


class CompoundTumourLoss(nn.Module):
    """Kaluva et al.'s tumour loss: ``l1 * class-weighted CE + l2 * Dice loss``.

    Args:
        ce_weight: l1 (not given by the paper: 1).
        dice_weight: l2 (not given by the paper: 1).
        tumour_weight: Cross-entropy weight of tumour pixels (background weighs 1). None (default):
            from the class frequency of each batch, :func:`class_weight_from_frequency`; better,
            pass the value computed over the training set.
        max_tumour_weight: Bound of the frequency-derived weight.
        dice: ``"milletari"`` (squared denominators, the form Kaluva et al. quote) or ``"soft"``.
        eps: Dice smoothing term.
        reduction: ``"mean"`` or ``"none"``.
        batch_dice: Sum the Dice term over the whole batch (nnU-Net's batch Dice), so slices
            without tumour pay for false positives in it too.

    The optional weight map multiplies the cross-entropy term only.
    """

    uses_weight = True

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        tumour_weight: float | None = None,
        max_tumour_weight: float = 100.0,
        dice: str = "milletari",
        eps: float = 1e-5,
        reduction: str = "mean",
        batch_dice: bool = False,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0:
            raise LossInputError(
                f"ce_weight and dice_weight must be >= 0; got {ce_weight}, {dice_weight}"
            )
        if tumour_weight is not None and tumour_weight < 0:
            raise LossInputError(f"tumour_weight must be >= 0; got {tumour_weight}")
        if max_tumour_weight < 1:
            raise LossInputError(f"max_tumour_weight must be >= 1; got {max_tumour_weight}")
        dice_losses: dict[str, type[_OverlapLoss]] = {"milletari": DiceLoss, "soft": SoftDiceLoss}
        if dice not in dice_losses:
            raise LossInputError(f"dice must be 'milletari' or 'soft'; got {dice!r}")
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.tumour_weight = None if tumour_weight is None else float(tumour_weight)
        self.max_tumour_weight = float(max_tumour_weight)
        self.ce = WeightedCrossEntropyLoss(reduction=reduction)
        self.dice = dice_losses[dice](eps=eps, reduction=reduction, batch=batch_dice)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            logits: (B, 1, H, W) or (B, 2, H, W).
            target: (B, H, W) or (B, 1, H, W) tumour mask in {0, 1}.
            weight: Optional per-pixel weights for the CE term, (B, H, W) or (B, 1, H, W).

        Returns:
            Scalar, or (B,) with ``reduction="none"``.
        """
        tw = self.tumour_weight
        if tw is None:
            tw = class_weight_from_frequency(target, self.max_tumour_weight)
        ce = self.ce(logits, target, weight, class_weights=(1.0, tw))
        return self.ce_weight * ce + self.dice_weight * self.dice(logits, target)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": DiceLoss,
    "soft_dice": SoftDiceLoss,
    "tversky": TverskyLoss,
    "mdice": MDiceLoss,
    "wce": WeightedCrossEntropyLoss,
    "tumour_compound": CompoundTumourLoss,
}


def build_loss(name: str, **options: object) -> nn.Module:
    """Build a registered loss.

    Args:
        name: ``dice``, ``soft_dice``, ``tversky``, ``mdice``, ``wce`` or ``tumour_compound``.
        **options: Constructor arguments of that loss.

    Returns:
        The loss module; ``loss.uses_weight`` says whether it uses a weight map.

    Raises:
        LossInputError: Unknown name or option (the message lists the valid ones) or a bad value.
    """
    if name not in LOSSES:
        raise LossInputError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    valid = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise LossInputError(
            f"unknown option(s) {', '.join(unknown)} for loss {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    try:
        return cls(**options)
    except TypeError as exc:
        raise LossInputError(f"bad option for loss {name!r}: {exc}") from exc
