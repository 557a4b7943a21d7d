"""Staged training: the stages of a configuration, and CR-U-Net's two-level training.

The morphological step between CR-U-Net's levels is not differentiable, so the cascade trains in
two stages (:func:`stages_of`), each in its own folder of the run:

1. ``level1``: level 1 alone, on the slices (:attr:`livseg.models.CRUNet.level1`);
2. ``level2``: level 2 on the slices plus the processed output of the trained level 1
   (``out/level1/best``), which is frozen and stays in eval mode. The processed level-1 masks
   of every level-2 slice are computed once (:func:`level1_masks`) and served with the slices
   by :class:`Level2Dataset`, which augments them with the same geometry as the image.

Other models train in a single stage, ``model``, in the run folder itself. This module is the one
home of that logic; :mod:`livseg.models.crunet` holds only the network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from livseg.checkpoint_spec import find_checkpoint
from livseg.data.augment import Augmentation
from livseg.data.cache import SliceCache
from livseg.data.dataset import SliceDataset
from livseg.data.volumes import VolumeCache, VolumeDataset
from livseg.errors import InputError
from livseg.models.checkpoint import load_weights
from livseg.train.config import Config

logger = logging.getLogger("livseg.train.staging")

__all__ = [
    "stages_of",
    "stage_dir",
    "stage_network",
    "freeze_for_stage",
    "forward_fn",
    "level1_masks",
    "Level2Dataset",
    "stage_dataset",
]


def stages_of(config: Config) -> list[str]:
    """Stages a configuration trains: ``["model"]``, or for CR-U-Net per ``train.stage``."""
    if config.model.name != "crunet":
        return ["model"]
    return ["level1", "level2"] if config.train.stage == "all" else [config.train.stage]


def stage_dir(out: Path, stage: str) -> Path:
    """A stage's folder: the run folder for ``model``, ``out/<stage>`` for CR-U-Net levels."""
    return out if stage == "model" else out / stage


def freeze_for_stage(model: nn.Module, stage: str) -> nn.Module:
    """Prepare ``model`` for training ``stage``; return the network that trains.

    * ``model``: the whole model trains;
    * ``level1``: ``model.level1`` trains; the model's forward returns level-1 logits and level 2
      is frozen (``requires_grad=False``);
    * ``level2``: ``model.level2`` trains; level 1 is frozen and put in eval mode (BatchNorm
      statistics and dropout fixed; training calls ``.train()`` on level 2 only).

    Args:
        model: The model (a :class:`livseg.models.CRUNet` for the level stages).
        stage: ``"model"``, ``"level1"`` or ``"level2"``.

    Returns:
        The trained network (its parameters are the ones the optimiser updates).
    """
    if stage == "model":
        return model
    train_level1 = stage == "level1"
    model.set_stage("level1" if train_level1 else "full")
    model.level1.requires_grad_(train_level1)
    model.level2.requires_grad_(not train_level1)
    if train_level1:
        return model.level1
    model.level1.eval()
    return model.level2


def stage_network(config: Config, stage: str, out: Path) -> tuple[nn.Module, nn.Module]:
    """Build the model of ``stage`` (level 2 starts from the trained level 1 of ``out``).

    Returns:
        ``(model, net)``: the whole model (what checkpoints hold) and the network that trains.

    Raises:
        InputError: Stage ``level2`` without a trained level 1 in ``out/level1/best``.
    """
    from livseg.models import build_model

    model = build_model(config.model.name, **config.model.options)
    if stage == "level2":
        level1 = find_checkpoint(out / "level1" / "best")
        if level1 is None:
            raise InputError(
                f"{out / 'level1' / 'best'}: no trained level 1; train stage "
                "level1 first (train.stage=all or level1)"
            )
        load_weights(model, level1)
    return model, freeze_for_stage(model, stage)


def forward_fn(model: nn.Module, net: nn.Module, stage: str) -> Callable[..., Tensor]:
    """``(x, mask) -> logits`` of the trained network (``net`` may be DDP-wrapped).

    At stage ``level2`` the network's input is ``model.level2_input(x, mask)`` with ``mask`` the
    processed level-1 mask (B, H, W); other stages ignore ``mask``.
    """
    if stage == "level2":

        def fwd(x: Tensor, mask: Tensor | None) -> Tensor:
            return net(model.level2_input(x, mask))
    else:

        def fwd(x: Tensor, mask: Tensor | None) -> Tensor:
            return net(x)

    return fwd


@torch.no_grad()
def level1_masks(
    model: nn.Module,
    cache: SliceCache,
    case_ids: Sequence[str],
    device: torch.device,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Processed level-1 masks of every cached slice of ``case_ids`` (CR-U-Net level-2 input).

    Level 1 runs frozen, in eval mode; its foreground probability goes through
    ``model.intermediate`` (threshold, closing, opening).

    Args:
        model: A :class:`livseg.models.CRUNet` with trained level 1.
        cache: The slice cache.
        case_ids: Cases to process.
        device: Where to run.
        batch_size: Slices per forward pass.

    Returns:
        ``{case_id: (N, H, W) uint8}`` 0/1 masks, in cache row order.
    """
    from livseg.models import foreground_probability

    was_training = model.level1.training
    model.level1.eval()
    out = {}
    for cid in case_ids:
        img = cache[cid].image
        parts = []
        for i in range(0, img.shape[0], batch_size):
            x = torch.from_numpy(np.array(img[i : i + batch_size], dtype=np.float32)).to(device)
            mask = model.intermediate(foreground_probability(model.level1(x).float()))
            parts.append(mask[:, 0].to(torch.uint8).cpu().numpy())
        out[cid] = (
            np.concatenate(parts) if parts else np.zeros((0, *img.shape[-2:]), dtype=np.uint8)
        )
    model.level1.train(was_training)
    return out


class Level2Dataset(SliceDataset):
    """A :class:`SliceDataset` that also returns the processed level-1 mask of each slice.

    Items carry ``"mask"``: float32 (H, W) of 0/1. The mask follows the image's geometric
    augmentation (nearest interpolation, like a label) and is left out of the intensity jitter.

    Args:
        cache: A built slice cache.
        case_ids: Cases to include.
        augment: Augmentation, or None.
        seed: Base seed of the augmentation randomness.
        with_weight: Return the cached weight map when there is one.
        masks: ``{case_id: (N, H, W) uint8}`` from :func:`level1_masks`.
    """

    def __init__(
        self,
        cache: SliceCache,
        case_ids: Sequence[str],
        augment: Augmentation | None,
        seed: int,
        with_weight: bool,
        masks: dict[str, np.ndarray],
    ) -> None:
        super().__init__(cache, case_ids, augment=augment, seed=seed, with_weight=with_weight)
        self.masks = masks

    def __getitem__(self, i: int) -> dict[str, Any]:
        case_id, row, image, label, weight = self.read(i)
        mask = np.array(self.masks[case_id][row], dtype=np.uint8)
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            grid = self.augment.sample_grid(image.shape[-2:], rng)
            image, label, weight = self.augment.apply_grid(grid, image, label, weight)
            _, mask, _ = self.augment.apply_grid(grid, image[:0], mask, None)
            image = self.augment.jitter_intensity(image, rng)
        return self.item(case_id, row, image, label, weight, mask=mask)


def _volume_dataset(config: Config, cache: VolumeCache, train_ids: Sequence[str]) -> VolumeDataset:
    """Random augmented patches of the coarse volumes; one epoch draws
    ``iterations_per_epoch * batch_size`` patches (one per training case when 0)."""
    t = config.train
    return VolumeDataset(
        cache,
        train_ids,
        patch=t.patch,
        augment=config.augment3d,
        samples_per_epoch=t.iterations_per_epoch * t.batch_size,
        seed=t.seed,
    )


def stage_dataset(
    config: Config,
    stage: str,
    model: nn.Module,
    cache: SliceCache | VolumeCache,
    case_ids: tuple[Sequence[str], Sequence[str]],
    device: torch.device,
    with_weight: bool,
) -> tuple[SliceDataset | VolumeDataset, dict[str, np.ndarray] | None]:
    """The training dataset of ``stage`` and, for ``level2``, the level-1 masks.

    The coarse 3-D pipeline trains on random augmented patches of its volumes.

    Args:
        config: The configuration.
        stage: The stage.
        model: The stage's model (level 1 trained, for ``level2``).
        cache: The slice cache.
        case_ids: ``(training case ids, validation case ids)``.
        device: Where level 1 runs.
        with_weight: Serve the cached weight maps.

    Returns:
        ``(dataset, masks)``: masks (of training and validation cases) only at ``level2``, else
        None.
    """
    train_ids, val_ids = case_ids
    t = config.train
    if config.data.pipeline == "coarse":
        return _volume_dataset(config, cache, train_ids), None
    if stage != "level2":
        dataset = SliceDataset(
            cache, train_ids, augment=config.augment, seed=t.seed, with_weight=with_weight
        )
        return dataset, None
    t0 = time.perf_counter()
    wanted = list(train_ids) + [c for c in val_ids if c not in train_ids]
    masks = level1_masks(model, cache, wanted, device, t.val_batch_size)
    logger.info(
        "level 2: processed level-1 masks of %d slices computed once in %.1f s",
        sum(m.shape[0] for m in masks.values()),
        time.perf_counter() - t0,
    )
    dataset = Level2Dataset(cache, train_ids, config.augment, t.seed, with_weight, masks)
    return dataset, masks
