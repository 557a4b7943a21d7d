"""The epoch loop: data loading, the optimiser step with mixed precision, the learning-rate step.

One epoch is ``train.iterations_per_epoch`` iterations (or one pass over the training slices),
drawn by a :class:`~torch.utils.data.DistributedSampler` (uniform, without replacement) or, with
``train.foreground_fraction`` > 0, by a
:class:`~livseg.train.distributed.DistributedWeightedSampler` (foreground slices oversampled).
Every iteration: forward under autocast (float16 with a GradScaler on CUDA; bfloat16 with
channels-last tensors on the CPU when ``train.amp_cpu``), loss in float32, backward,
optional gradient clipping, optimiser step, scheduler step. Every epoch reseeds torch, numpy and
Python from ``(train.seed, epoch, rank)``, so a resumed run draws the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler

from livseg.data.cache import SliceCache
from livseg.data.dataset import SliceDataset
from livseg.distributed import DistInfo
from livseg.infer.backend import memory_format
from livseg.train.config import Config, OptimizerConfig, TrainConfig
from livseg.train.distributed import DistributedWeightedSampler, all_reduce_mean
from livseg.train.results import ProgressCallback, TrainingDiverged
from livseg.train.resume import Optimisation, StageState
from livseg.train.schedules import SchedulePlan, build_scheduler

__all__ = [
    "Run",
    "Trainee",
    "EpochStats",
    "seed_all",
    "loss_value",
    "make_loader",
    "build_optimisation",
    "OnStep",
    "train_epoch",
    "autocast",
]


@dataclass
class Run:
    """What every stage of a run shares.

    Attributes:
        config: The configuration.
        out: The run folder.
        device: This process's device.
        dist: This process's place in the job.
        cache: The slice cache.
        train_ids: Training case ids.
        val_ids: Validation case ids.
        resume: Continue from the last checkpoints.
        progress: Progress callback (rank 0), or None.
    """

    config: Config
    out: Path
    device: torch.device
    dist: DistInfo
    cache: SliceCache
    train_ids: list[str]
    val_ids: list[str]
    resume: bool
    progress: ProgressCallback | None


@dataclass
class Trainee:
    """What trains in a stage, and on what.

    Attributes:
        model: The whole model (what checkpoints hold).
        net: The trained network (``model`` or one CR-U-Net level), not DDP-wrapped.
        fwd: ``(x, mask) -> logits`` through the (DDP-wrapped) trained network.
        eval_fwd: The same without DDP (validation on rank 0).
        loss_fn: The loss, called as ``loss_fn(logits, target, weight)``.
        uses_weight: The loss takes the weight map.
        dataset: The training slices.
        loader: Their DataLoader.
        sampler: Its sampler (``set_epoch`` per pass).
        steps: Iterations per epoch.
        masks: CR-U-Net level 2: processed level-1 masks per case, else None.
        amp: Mixed precision on.
    """

    model: nn.Module
    net: nn.Module
    fwd: Callable[..., Tensor]
    eval_fwd: Callable[..., Tensor]
    loss_fn: nn.Module
    uses_weight: bool
    dataset: SliceDataset
    loader: DataLoader
    sampler: Any
    steps: int
    masks: dict[str, np.ndarray] | None
    amp: bool
    cpu_bf16: bool = False


@dataclass(frozen=True)
class EpochStats:
    """The training half of an epoch.

    Attributes:
        loss: Mean training loss (over iterations and ranks).
        slices_per_s: Training throughput of all ranks together.
        lr: Learning rate of the epoch's last iteration.
        started: ``time.perf_counter()`` at the epoch's start.
    """

    loss: float
    slices_per_s: float
    lr: float
    started: float


def seed_all(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, numpy and Python from (seed, epoch, rank)."""
    s = int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _binary_target(label: Tensor, target: str) -> Tensor:
    return (label >= 1).float() if target == "liver" else (label == 2).float()


def _match_size(t: Tensor | None, size: tuple[int, int]) -> Tensor | None:
    """Nearest-resize (B, H, W) to ``size`` (DenseFCN's SBU output is larger than its input)."""
    if t is None or tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t[:, None].float(), size=size, mode="nearest")[:, 0]


def loss_value(
    loss_fn: nn.Module,
    logits: Tensor,
    label: Tensor,
    weight: Tensor | None,
    target: str,
    uses_weight: bool,
) -> Tensor:
    """The loss of logits (B, C, h, w) against labels (B, H, W) {0, 1, 2}, in float32.

    The binary target is ``label >= 1`` (liver) or ``label == 2`` (tumour); target and weight map
    are nearest-resized to the logits' size when it differs.
    """
    y = _match_size(_binary_target(label, target), tuple(logits.shape[-2:]))
    w = _match_size(weight, tuple(logits.shape[-2:])) if uses_weight else None
    return loss_fn(logits.float(), y, w)


def _sampler(dataset: SliceDataset, t: TrainConfig, d: DistInfo) -> Any:
    if t.foreground_fraction > 0:
        n = (
            t.iterations_per_epoch * t.batch_size
            if t.iterations_per_epoch
            else math.ceil(len(dataset) / d.world_size)
        )
        weights = dataset.sample_weights(t.target, t.foreground_fraction)
        return DistributedWeightedSampler(weights, n, d.rank, d.world_size, t.seed)
    return DistributedSampler(
        dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=t.seed, drop_last=False
    )


def make_loader(
    dataset: SliceDataset, t: TrainConfig, d: DistInfo, device: torch.device
) -> tuple[DataLoader, Any, int]:
    """DataLoader, its (distributed) sampler and the iterations per epoch."""
    sampler = _sampler(dataset, t, d)
    loader = DataLoader(
        dataset,
        batch_size=t.batch_size,
        sampler=sampler,
        num_workers=t.num_workers,
        drop_last=len(sampler) >= t.batch_size,
        pin_memory=device.type == "cuda",
    )
    return loader, sampler, t.iterations_per_epoch or len(loader)


def _batches(trainee: Trainee, epoch: int) -> Iterator[dict[str, Any]]:
    """``trainee.steps`` batches of ``epoch``, cycling through the sampler as often as needed."""
    n, p = 0, 0
    while True:
        key = epoch * 1000 + p
        trainee.sampler.set_epoch(key)
        trainee.dataset.set_epoch(key)
        for batch in trainee.loader:
            yield batch
            n += 1
            if n >= trainee.steps:
                return
        p += 1


def build_optimisation(
    params: list[nn.Parameter], config: Config, amp: bool, steps: int
) -> Optimisation:
    """Adam/AdamW over ``params``, its learning-rate scheduler and the GradScaler (on if ``amp``).

    Args:
        params: Parameters to optimise.
        config: The configuration (``optimizer``, ``schedule``, ``train.epochs``).
        amp: Mixed precision (the GradScaler is a no-op otherwise).
        steps: Iterations per epoch.
    """
    o: OptimizerConfig = config.optimizer
    opt_cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    plan = SchedulePlan(config.schedule, o.lr, steps * config.train.epochs, steps)
    return Optimisation(
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, plan),
        plan=plan,
        scaler=torch.amp.GradScaler("cuda", enabled=amp),
    )


def autocast(trainee: Trainee) -> contextlib.AbstractContextManager:
    """The trainee's autocast: float16 on CUDA (``amp``), bfloat16 on the CPU (``cpu_bf16``),
    else none."""
    if trainee.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if trainee.cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimiser_step(opt: Optimisation, loss: Tensor, grad_clip: float) -> None:
    """Backward (scaled), optional clipping, optimiser and scheduler steps."""
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    if grad_clip > 0:
        opt.scaler.unscale_(opt.optimizer)
        params = [p for group in opt.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()


def _batch_loss(run: Run, trainee: Trainee, batch: dict[str, Any]) -> Tensor:
    dev = run.device
    x = batch["image"].to(dev, non_blocking=True)
    mask = batch["mask"].to(dev, non_blocking=True) if "mask" in batch else None
    label = batch["label"].to(dev, non_blocking=True)
    weight = batch["weight"].to(dev, non_blocking=True) if "weight" in batch else None
    if trainee.cpu_bf16:
        x = x.contiguous(memory_format=memory_format(x.dim()))
    with autocast(trainee):
        logits = trainee.fwd(x, mask)
    return loss_value(
        trainee.loss_fn, logits, label, weight, run.config.train.target, trainee.uses_weight
    )


OnStep = Callable[[int, float, float, float, float], None]
"""Called after every iteration with ``(iteration in epoch (1-based), loss, mean loss of the
epoch so far, learning rate, slices/s of all ranks)``."""


def train_epoch(
    run: Run,
    trainee: Trainee,
    opt: Optimisation,
    state: StageState,
    on_step: OnStep,
    where: Path,
) -> EpochStats:
    """Train epoch ``state.epoch + 1``: reseed, then ``trainee.steps`` optimiser steps.

    Advances ``state.global_step``; ``state.epoch`` is left to the caller. ``where`` (the stage
    folder) names the run in errors.

    Raises:
        TrainingDiverged: The loss is NaN or infinite (without mixed precision, where the
            GradScaler skips such steps).
    """
    t, d = run.config.train, run.dist
    seed_all(t.seed, state.epoch + 1, d.rank)
    trainee.net.train()
    started = time.perf_counter()
    loss_sum, n_seen = 0.0, 0
    lr = run.config.optimizer.lr
    for step, batch in enumerate(_batches(trainee, state.epoch), 1):
        lr = float(opt.optimizer.param_groups[0]["lr"])
        loss = _batch_loss(run, trainee, batch)
        if not trainee.amp and not torch.isfinite(loss).item():
            raise TrainingDiverged(
                f"{where}: loss is {float(loss)} at epoch {state.epoch + 1}, iteration {step}"
                "; lower optimizer.lr or set optimizer.grad_clip"
            )
        _optimiser_step(opt, loss, run.config.optimizer.grad_clip)
        state.global_step += 1
        value = float(loss.detach())
        loss_sum += value
        n_seen += batch["image"].shape[0]
        rate = n_seen * d.world_size / max(time.perf_counter() - started, 1e-9)
        on_step(step, value, loss_sum / step, lr, rate)
    rate = n_seen * d.world_size / max(time.perf_counter() - started, 1e-9)
    return EpochStats(
        loss=all_reduce_mean(loss_sum / max(trainee.steps, 1), run.device),
        slices_per_s=rate,
        lr=lr,
        started=started,
    )
