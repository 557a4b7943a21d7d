"""Losses and weight maps: hand-computed values, batch behaviour, empty references, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from livseg.errors import LivsegError
from livseg.losses import (
    LOSSES,
    CompoundTumourLoss,
    DiceLoss,
    MDiceLoss,
    SoftDiceLoss,
    TverskyLoss,
    WeightedCrossEntropyLoss,
    build_loss,
    class_weight_from_frequency,
)
from livseg.preprocess.weight_map import border_weight_map

EPS = 1e-5

# One 2x2 item: p = [[0.8, 0.6], [0.1, 0.3]], g = [[1, 0], [0, 1]].
# sum(pg) = 1.1, sum(p) = 1.8, sum(g) = 2, sum(p^2) = 1.1, sum(g^2) = 2,
# FP = sum(p(1-g)) = 0.7, FN = sum((1-p)g) = 0.9.
P = torch.tensor([[0.8, 0.6], [0.1, 0.3]])
G = torch.tensor([[1, 0], [0, 1]])
DICE_MILLETARI = 1 - (2.2 + EPS) / (3.1 + EPS)  # 0.29032
DICE_SCORE = (2.2 + EPS) / (3.8 + EPS)  # 0.57895
TVERSKY = (1.1 + EPS) / (1.1 + 0.5 * 0.7 + 0.7 * 0.9 + EPS)  # 1.1 / 2.08 = 0.52885


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _logits1(p: torch.Tensor) -> torch.Tensor:
    """(B, H, W) probabilities -> (B, 1, H, W) sigmoid logits."""
    return torch.logit(p.double()).float()[:, None]


def _logits2(p: torch.Tensor) -> torch.Tensor:
    """(B, H, W) probabilities -> (B, 2, H, W) softmax logits with foreground p."""
    fg = torch.logit(p.double()).float()
    return torch.stack([torch.zeros_like(fg), fg], dim=1)


@pytest.mark.parametrize("to_logits", [_logits1, _logits2])
@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (DiceLoss(), DICE_MILLETARI),
        (SoftDiceLoss(), 1 - DICE_SCORE),
        (TverskyLoss(alpha=0.5, beta=0.7), 1 - TVERSKY),
        (MDiceLoss(), 1 - DICE_SCORE * TVERSKY),
    ],
)
def test_overlap_losses_equal_hand_values(loss, expected, to_logits):
    logits = to_logits(P[None])
    assert loss(logits, G[None]).item() == pytest.approx(expected, abs=1e-5)
    assert loss(logits, G[None, None].bool()).item() == pytest.approx(expected, abs=1e-5)


def test_hand_values_are_what_the_comments_say():
    assert DICE_MILLETARI == pytest.approx(0.290323, abs=1e-5)
    assert 1 - DICE_SCORE * TVERSKY == pytest.approx(1 - (2.2 / 3.8) * (1.1 / 2.08), abs=1e-5)


@pytest.mark.parametrize("cls", [DiceLoss, SoftDiceLoss, TverskyLoss, MDiceLoss])
def test_batch_items_are_summed_separately_then_averaged(cls):
    loss = cls()
    p = torch.stack([P, torch.tensor([[0.2, 0.9], [0.9, 0.5]])])
    g = torch.stack([G, torch.tensor([[0, 0], [1, 1]])])
    logits = _logits1(p)
    per_item = cls(reduction="none")(logits, g)
    assert per_item.shape == (2,)
    assert per_item[0].item() == pytest.approx(loss(logits[:1], g[:1]).item(), abs=1e-6)
    assert loss(logits, g).item() == pytest.approx(per_item.mean().item(), abs=1e-6)
    pooled = loss(logits.permute(1, 0, 2, 3).reshape(1, 1, 4, 2), g.reshape(1, 4, 2))
    assert abs(pooled.item() - loss(logits, g).item()) > 1e-4  # not pooled over the batch


def test_batch_dice_sums_over_the_batch_so_empty_items_pay_for_false_positives():
    """``batch=True``: item 0 has no foreground and p = 0.5 on its 4 pixels, item 1 is G predicted
    perfectly. Pooled: sum(pg) = 2, sum(p) = 2 + 2, sum(g) = 2 -> soft Dice (4 + eps) / (6 + eps);
    per item the empty item's loss is ~1 whatever it predicts, so its gradient is ~0."""
    g = torch.stack([torch.zeros(2, 2), G.float()])
    logits = torch.stack([torch.zeros(1, 2, 2), (G.float() * 100 - 50)[None]]).requires_grad_()
    batch = SoftDiceLoss(batch=True)(logits, g)
    assert batch.item() == pytest.approx(1 - (4 + EPS) / (6 + EPS), abs=1e-6)
    grad_batch = torch.autograd.grad(batch, logits)[0][0].abs().sum().item()
    grad_item = torch.autograd.grad(SoftDiceLoss()(logits, g), logits)[0][0].abs().sum().item()
    assert grad_item < 1e-4 < 0.1 < grad_batch
    # MDice: D = 4/6, T = 2 / (2 + 0.5 * 2) = 2/3
    mdice = MDiceLoss(batch=True)(logits, g).item()
    assert mdice == pytest.approx(1 - (2 / 3) * (2 / 3), abs=1e-5)
    assert build_loss("mdice", batch=True).batch
    # the tumour compound loss: its Dice term pooled the same way (CE unchanged)
    both = CompoundTumourLoss(tumour_weight=1.0, dice="soft", batch_dice=True)(logits, g)
    ce = WeightedCrossEntropyLoss()(logits, g)
    assert both.item() == pytest.approx(ce.item() + batch.item(), abs=1e-6)
    with pytest.raises(LivsegError, match="reduction='mean'"):
        SoftDiceLoss(batch=True, reduction="none")


def test_empty_reference():
    g = torch.zeros(1, 2, 2, dtype=torch.long)
    empty_pred = torch.full((1, 1, 2, 2), -50.0)  # p ~ 2e-22
    for cls in (DiceLoss, SoftDiceLoss, TverskyLoss, MDiceLoss):
        assert cls()(empty_pred, g).item() == pytest.approx(0.0, abs=1e-6), cls.__name__
    half = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere, sum(p) = 2, sum(p^2) = 1
    assert DiceLoss()(half, g).item() == pytest.approx(1 - EPS / (1 + EPS), abs=1e-7)
    assert SoftDiceLoss()(half, g).item() == pytest.approx(1 - EPS / (2 + EPS), abs=1e-7)
    # Tversky: TP = 0, FP = 2 -> T = eps / (0.5 * 2 + eps)
    assert TverskyLoss()(half, g).item() == pytest.approx(1 - EPS / (1 + EPS), abs=1e-7)
    # per-item mean: an empty reference with a non-empty prediction counts ~1, a perfect item 0
    g2 = torch.stack([torch.zeros(2, 2), G.float()])
    logits = torch.stack([torch.zeros(1, 2, 2), (G.float() * 100 - 50)[None]])
    d_t = (EPS / (2 + EPS)) * (EPS / (1 + EPS))  # item 0: D * T ~ 5e-11; item 1: perfect
    assert MDiceLoss()(logits, g2).item() == pytest.approx(0.5 * (1 - d_t), abs=1e-7)


def test_mdice_is_zero_on_a_perfect_prediction_and_at_most_one():
    g = (torch.rand(3, 16, 16) > 0.6).long()
    perfect = (g.float() * 100 - 50)[:, None]
    assert MDiceLoss()(perfect, g).item() == pytest.approx(0.0, abs=1e-6)
    assert MDiceLoss()(-perfect, g).item() == pytest.approx(1.0, abs=1e-5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        scale = float(torch.rand(1, generator=gen) * 20)
        logits = torch.randn(2, 1, 8, 8, generator=gen) * scale
        target = torch.rand(2, 8, 8, generator=gen) > torch.rand(1, generator=gen)
        per_item = MDiceLoss(reduction="none")(logits, target)
        assert (per_item <= 1.0).all() and (per_item >= 0.0).all()


@pytest.mark.parametrize("to_logits", [_logits1, _logits2])
def test_weighted_cross_entropy_hand_values(to_logits):
    w = torch.tensor([[[2.0, 1.0], [1.0, 3.0]]])
    ce = [-math.log(0.8), -math.log(0.4), -math.log(0.9), -math.log(0.3)]
    weights = [2.0, 1.0, 1.0, 3.0]
    weighted = sum(a * b for a, b in zip(weights, ce, strict=True))
    logits = to_logits(P[None])
    assert WeightedCrossEntropyLoss()(logits, G[None], w).item() == pytest.approx(
        weighted / 4, rel=1e-5
    )
    assert WeightedCrossEntropyLoss()(logits, G[None]).item() == pytest.approx(
        sum(ce) / 4, rel=1e-5
    )
    by_weights = WeightedCrossEntropyLoss(normalize="weights")(logits, G[None], w[:, None])
    assert by_weights.item() == pytest.approx(weighted / 7, rel=1e-5)
    # class weights (background 1, foreground 4) multiply the map
    cw = [4 * 2.0, 1.0, 1.0, 4 * 3.0]
    expected = sum(a * b for a, b in zip(cw, ce, strict=True)) / 4
    got = WeightedCrossEntropyLoss(class_weights=(1, 4))(logits, G[None], w).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_compound_tumour_loss_hand_values():
    logits = _logits2(P[None])
    ce = [-math.log(0.8), -math.log(0.4), -math.log(0.9), -math.log(0.3)]
    wce = (3 * ce[0] + ce[1] + ce[2] + 3 * ce[3]) / 4
    loss = CompoundTumourLoss(ce_weight=0.5, dice_weight=2.0, tumour_weight=3.0)
    assert loss(logits, G[None]).item() == pytest.approx(0.5 * wce + 2.0 * DICE_MILLETARI, rel=1e-5)
    # tumour weight from the batch class frequency: 2 background / 2 tumour -> 1
    g = torch.tensor([[[1, 0], [0, 0]]])
    freq = CompoundTumourLoss(dice="soft")(logits, g).item()
    ce_g = [-math.log(0.8), -math.log(0.4), -math.log(0.9), -math.log(0.7)]
    wce_g = (3 * ce_g[0] + sum(ce_g[1:])) / 4  # 3 background / 1 tumour -> weight 3
    dice_g = 1 - (1.6 + EPS) / (1.8 + 1 + EPS)
    assert freq == pytest.approx(wce_g + dice_g, rel=1e-5)


def test_class_weight_from_frequency():
    assert class_weight_from_frequency(np.array([0, 0, 0, 1])) == 3.0
    assert class_weight_from_frequency(torch.tensor([1, 1, 1, 0])) == 1.0  # never below 1
    assert class_weight_from_frequency(np.zeros(10), max_weight=50) == 50.0
    assert class_weight_from_frequency(np.eye(1000)[:1], max_weight=20) == 20.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow_through_every_loss(name):
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.rand(2, 8, 8) > 0.7
    loss = build_loss(name)
    value = loss(logits, target, torch.rand(2, 8, 8) + 0.5)
    assert value.dim() == 0
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_validation_errors():
    logits = torch.zeros(1, 1, 2, 2)
    with pytest.raises(LivsegError, match="0 or 1"):
        DiceLoss()(logits, torch.tensor([[[0, 2], [1, 0]]]))
    with pytest.raises(LivsegError, match="target must be"):
        DiceLoss()(logits, torch.zeros(1, 3, 3))
    with pytest.raises(LivsegError, match="logits must be"):
        MDiceLoss()(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(LivsegError, match="weight map"):
        WeightedCrossEntropyLoss()(logits, torch.zeros(1, 2, 2), torch.ones(1, 3, 3))
    with pytest.raises(LivsegError, match=">= 0"):
        WeightedCrossEntropyLoss()(logits, torch.zeros(1, 2, 2), -torch.ones(1, 2, 2))
    with pytest.raises(LivsegError, match="alpha"):
        TverskyLoss(alpha=1.5)
    with pytest.raises(LivsegError, match="class_weights"):
        WeightedCrossEntropyLoss(class_weights=(1, 2, 3))


def test_build_loss_registry():
    assert isinstance(build_loss("mdice", alpha=0.3), MDiceLoss)
    assert build_loss("mdice").alpha == 0.5 and build_loss("mdice").beta == 0.7
    assert build_loss("wce").uses_weight and not build_loss("dice").uses_weight
    with pytest.raises(LivsegError, match="dice, mdice, soft_dice, tumour_compound, tversky, wce"):
        build_loss("focal")
    with pytest.raises(LivsegError, match="valid options: alpha, beta, eps, reduction"):
        build_loss("tversky", gamma=2)


# --- weight maps ---------------------------------------------------------------------------


def test_border_weight_map_hand_values():
    m = np.zeros((7, 7), dtype=np.uint8)
    m[2:5, 2:5] = 1  # boundary = the 8 ring pixels; (3, 3) is interior
    w = border_weight_map(m, w0=5, sigma=1)
    assert w.dtype == np.float32 and w.shape == (7, 7)
    assert w[2, 2] == pytest.approx(6.0)  # on the boundary
    assert w[3, 3] == pytest.approx(1 + 5 * math.exp(-0.5))  # d = 1
    assert w[0, 3] == pytest.approx(1 + 5 * math.exp(-2))  # d = 2
    assert w[0, 0] == pytest.approx(1 + 5 * math.exp(-4))  # d^2 = 8
    assert w.min() >= 1 and w.max() <= 6


def test_border_weight_map_empty_full_edge_and_stack():
    assert np.array_equal(border_weight_map(np.zeros((5, 5))), np.ones((5, 5)))
    assert np.array_equal(border_weight_map(np.ones((5, 5))), np.ones((5, 5)))
    half = np.zeros((6, 6), dtype=bool)
    half[:, :3] = True  # liver touching the image edge: the edge is no boundary
    w = border_weight_map(half, w0=5, sigma=5)
    assert w[0, 2] == pytest.approx(6.0) and w[0, 0] < w[0, 1] < w[0, 2]
    labels = np.stack([half.astype(np.uint8) * 2, np.zeros((6, 6), np.uint8)])  # LiTS labels
    stack = border_weight_map(labels)
    assert stack.shape == (2, 6, 6)
    assert np.allclose(stack[0], w) and np.all(stack[1] == 1)
    with pytest.raises(LivsegError):
        border_weight_map(np.zeros(5))
    with pytest.raises(LivsegError, match="sigma"):
        border_weight_map(np.zeros((3, 3)), sigma=0)
