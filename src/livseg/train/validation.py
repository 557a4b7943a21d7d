"""Validation during training: predict the validation cases' cached slices and score them.

The coarse 3-D pipeline predicts each validation case's whole coarse volume (zero-padded to the
network's multiple) instead, scored with the coarse grid's spacing.

The slices of each validation case are predicted in batches of ``train.val_batch_size``, the
foreground probability (resized to the cache's slice size when the network's output differs)
thresholded at 0.5, stacked back into a per-case volume at the working resolution and scored
with the LiTS metric set (:func:`livseg.metrics.lits.evaluate_cases`) with the working spacing.
A tumour model is scored inside the reference liver. Runs on rank 0 only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from livseg.data.cache import CachedCase
from livseg.train.config import TrainConfig
from livseg.train.loop import Run, Trainee, autocast, loss_value

__all__ = ["validate", "score"]


def _tensor(array: Any, sl: slice, dtype: Any, device: torch.device) -> Tensor:
    return torch.from_numpy(np.array(array[sl], dtype=dtype)).to(device)


def _predict_case(
    run: Run, trainee: Trainee, case_id: str, case: CachedCase
) -> tuple[np.ndarray, float]:
    """(N, H, W) bool prediction of a case's cached slices and the summed loss over them."""
    t = run.config.train
    img, lab = case.image, np.asarray(case.label)
    wmap = case.weight if trainee.uses_weight else None
    masks = trainee.masks
    pred = np.zeros(lab.shape, dtype=bool)
    loss_sum = 0.0
    for i in range(0, lab.shape[0], t.val_batch_size):
        sl = slice(i, i + t.val_batch_size)
        x = _tensor(img, sl, np.float32, run.device)
        m = None if masks is None else _tensor(masks[case_id], sl, np.float32, run.device)
        with autocast(trainee):
            logits = trainee.eval_fwd(x, m).float()
        y = _tensor(lab, sl, np.int64, run.device)
        w = None if wmap is None else _tensor(wmap, sl, np.float32, run.device)
        loss = loss_value(trainee.loss_fn, logits, y, w, t.target, trainee.uses_weight)
        loss_sum += float(loss) * x.shape[0]
        pred[sl] = _foreground(logits, tuple(lab.shape[-2:]))
    return pred, loss_sum


def _foreground(logits: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(B, H, W) bool: foreground probability > 0.5, bilinearly resized to ``size`` first."""
    from livseg.models import foreground_probability

    prob = foreground_probability(logits)
    if tuple(prob.shape[-2:]) != size:
        prob = F.interpolate(prob[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return (prob > 0.5).cpu().numpy()


def _as_labels(pred: np.ndarray, reference: np.ndarray, target: str) -> np.ndarray:
    """A {0, 1, 2} label volume of a binary prediction (a tumour one inside the reference liver)."""
    if target == "liver":
        return pred.astype(np.uint8)
    liver = reference >= 1
    labels = liver.astype(np.uint8)
    labels[pred & liver] = 2
    return labels


def _predict_volume(
    run: Run, trainee: Trainee, case_id: str
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], float]:
    """Coarse pipeline: (prediction, labels, spacing, loss) of one whole validation volume."""
    from livseg.preprocess.coarse import pad_to

    cache = run.cache
    lab = cache.labels[case_id]
    mult = 2 ** int(trainee.net.depth)
    image, crop = pad_to(cache.images[case_id].astype(np.float32), mult, minimum=2 * mult)
    x = torch.from_numpy(image)[None, None].to(run.device)
    with autocast(trainee):
        logits = trainee.eval_fwd(x, None).float()[(slice(None), slice(None), *crop)]
    y = torch.from_numpy(lab.astype(np.int64))[None].to(run.device)
    loss = loss_value(trainee.loss_fn, logits, y, None, run.config.train.target, False)
    pred = (torch.sigmoid(logits[0, 0]) > 0.5).cpu().numpy()
    return pred, lab, cache.spacing[case_id], float(loss)


def _case(run: Run, trainee: Trainee, cid: str) -> tuple[np.ndarray, np.ndarray, tuple, float, int]:
    """(prediction, labels, spacing, summed loss, items) of one validation case."""
    if run.config.data.pipeline == "coarse":
        pred, lab, spacing, loss = _predict_volume(run, trainee, cid)
        return pred, lab, spacing, loss, 1
    case = run.cache[cid]
    lab = np.asarray(case.label)
    pred, case_loss = _predict_case(run, trainee, cid, case)
    return pred, lab, tuple(case.meta["working_spacing"]), case_loss, lab.shape[0]


@torch.no_grad()
def validate(run: Run, trainee: Trainee) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Predict and score the validation cases.

    Returns:
        ``(summary, rows)``: the LiTS summary (:func:`livseg.metrics.lits.summarize`) plus
        ``val_loss`` (mean loss per slice, or per volume for the coarse pipeline), and one
        metric row per validation case.
    """
    from livseg.metrics.lits import evaluate_cases

    net = trainee.net
    was_training = net.training
    net.eval()
    triples, loss_sum, n_items = [], 0.0, 0
    for cid in run.val_ids:
        pred, lab, spacing, case_loss, items = _case(run, trainee, cid)
        loss_sum += case_loss
        n_items += items
        labels = _as_labels(pred, lab, run.config.train.target)
        triples.append((labels, lab, spacing))
    net.train(was_training)
    result = evaluate_cases(triples, case_ids=list(run.val_ids))
    summary = {k: float(v) for k, v in result.summary.items()}
    summary["val_loss"] = loss_sum / max(n_items, 1)
    return summary, [c.row() for c in result.cases]


def score(summary: dict[str, float], t: TrainConfig) -> float:
    """The ``train.monitor`` value of a validation summary (higher is better)."""
    if t.monitor == "neg_loss":
        return -summary["val_loss"]
    prefix = "liver" if t.target == "liver" else "tumor"
    return summary[f"{prefix}_{t.monitor}"]
