"""Learning-rate schedules: ``torch.optim.lr_scheduler`` objects built from a ScheduleConfig.

A schedule runs per iteration over the whole stage (all epochs); :func:`learning_rate` is its
closed form (documented in :class:`livseg.train.config.ScheduleConfig`). :func:`build_scheduler`
builds the PyTorch scheduler that follows it:

==============  ==========================================================================
``constant``    ``ConstantLR(factor=1)``
``poly``        ``PolynomialLR`` (``final_lr == 0``)
``cosine``      ``CosineAnnealingLR(eta_min=final_lr)``
``step``        ``StepLR(step_size=step_epochs * iterations per epoch)``
``exponential`` ``ExponentialLR(gamma=(final_lr / lr) ** (1 / total iterations))``
warm-up         ``LinearLR(start_factor=0.01)`` chained in front (``ChainedScheduler``)
==============  ==========================================================================

PyTorch has no scheduler for ``poly`` with ``final_lr > 0``, nor for ``cosine`` with
``final_lr > 0`` under a warm-up (its cosine is not multiplicative then); those two run as a
``LambdaLR`` on :func:`learning_rate`.

The scheduler's state goes into the resume checkpoint with the :class:`SchedulePlan` it was
built for. :func:`restore_scheduler` loads it when the plan is unchanged (a resumed run continues
with exactly the learning rates of an uninterrupted one); when the plan changed (e.g.
``train.epochs`` raised), the schedule is re-planned for the new length and advanced to the
current iteration, as if the run had been planned that way from the start.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    PolynomialLR,
    StepLR,
)

from livseg.train.config import ScheduleConfig

logger = logging.getLogger("livseg.train.schedules")

__all__ = ["SchedulePlan", "learning_rate", "build_scheduler", "restore_scheduler"]

WARMUP_START = 0.01
"""Warm-up starts at this fraction of the scheduled learning rate."""


@dataclass(frozen=True)
class SchedulePlan:
    """What a stage's scheduler is built for.

    Attributes:
        schedule: The schedule settings.
        lr0: The optimiser's initial learning rate.
        total_steps: Iterations of the whole stage (all epochs), >= 1.
        steps_per_epoch: Iterations per epoch, >= 1.
    """

    schedule: ScheduleConfig
    lr0: float
    total_steps: int
    steps_per_epoch: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values (saved beside the scheduler state in ``state.pt``)."""
        return {
            "schedule": dataclasses.asdict(self.schedule),
            "lr0": float(self.lr0),
            "total_steps": int(self.total_steps),
            "steps_per_epoch": int(self.steps_per_epoch),
        }

    def at(self, step: int) -> float:
        """The closed-form learning rate at iteration ``step`` (0-based)."""
        return learning_rate(self.schedule, self.lr0, step, self.total_steps, self.steps_per_epoch)


def learning_rate(
    schedule: ScheduleConfig, lr0: float, step: int, total_steps: int, steps_per_epoch: int
) -> float:
    """Learning rate at iteration ``step`` (0-based) of ``total_steps`` (see ScheduleConfig)."""
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    epoch = step // max(steps_per_epoch, 1)
    name, lo = schedule.name, schedule.final_lr
    if name == "constant":
        lr = lr0
    elif name == "poly":
        lr = lo + (lr0 - lo) * (1.0 - t) ** schedule.power
    elif name == "cosine":
        lr = lo + (lr0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
    elif name == "step":
        lr = lr0 * schedule.gamma ** (epoch // schedule.step_epochs)
    elif name == "exponential":
        lr = lr0 * (lo / lr0) ** t
    else:  # pragma: no cover - validated by the config
        raise ValueError(f"unknown schedule {name!r}")
    warm = schedule.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        lr *= WARMUP_START + (1.0 - WARMUP_START) * step / warm
    return float(lr)


def _torch_schedule(optimizer: Optimizer, plan: SchedulePlan) -> LRScheduler | None:
    """The PyTorch scheduler of the main schedule, or None where PyTorch has none."""
    s, total = plan.schedule, plan.total_steps
    warm = s.warmup_epochs > 0
    if s.name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    if s.name == "poly" and s.final_lr == 0:
        return PolynomialLR(optimizer, total_iters=total, power=s.power)
    if s.name == "cosine" and not (warm and s.final_lr != 0):
        return CosineAnnealingLR(optimizer, T_max=total, eta_min=s.final_lr)
    if s.name == "step":
        return StepLR(optimizer, step_size=s.step_epochs * plan.steps_per_epoch, gamma=s.gamma)
    if s.name == "exponential":
        return ExponentialLR(optimizer, gamma=(s.final_lr / plan.lr0) ** (1.0 / total))
    return None


def build_scheduler(optimizer: Optimizer, plan: SchedulePlan) -> LRScheduler:
    """A fresh scheduler for ``plan``; it sets the optimiser's learning rate of iteration 0.

    Call ``step()`` once after every optimiser step: before iteration ``k`` (0-based) the
    optimiser's learning rate is ``plan.at(k)`` (up to rounding).

    Args:
        optimizer: The optimiser (its ``lr`` must be ``plan.lr0``).
        plan: The schedule, its length and iterations per epoch.
    """
    main = _torch_schedule(optimizer, plan)
    if main is None:
        return LambdaLR(optimizer, lambda step: plan.at(step) / plan.lr0)
    warm = plan.schedule.warmup_epochs * plan.steps_per_epoch
    if warm == 0:
        return main
    # both scale the current rate, so the warm-up multiplies the main schedule
    warmup = LinearLR(optimizer, start_factor=WARMUP_START, end_factor=1.0, total_iters=warm)
    return ChainedScheduler([warmup, main], optimizer=optimizer)


def restore_scheduler(
    optimizer: Optimizer,
    scheduler: LRScheduler,
    plan: SchedulePlan,
    saved: dict[str, Any],
    global_step: int,
) -> LRScheduler:
    """The scheduler of a resumed stage, after the optimiser's state has been loaded.

    Args:
        optimizer: The optimiser, with its saved state loaded.
        scheduler: A fresh scheduler from :func:`build_scheduler` (built before the optimiser's
            state was loaded).
        plan: The current plan.
        saved: The resume state (``state.pt``): ``scheduler`` and ``schedule_plan`` entries when
            written by this version.
        global_step: Iterations done.

    Returns:
        ``scheduler`` with the saved state when the plan is unchanged; otherwise a scheduler for
        the new plan advanced by ``global_step`` iterations.
    """
    if saved.get("scheduler") is not None and saved.get("schedule_plan") == plan.to_dict():
        scheduler.load_state_dict(saved["scheduler"])
        return scheduler
    logger.info(
        "learning-rate schedule re-planned for %d iterations (the schedule, the learning rate or "
        "the run's length changed, or the checkpoint has no scheduler state); continuing at "
        "iteration %d",
        plan.total_steps,
        global_step,
    )
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = plan.lr0
    fresh = build_scheduler(optimizer, plan)
    with warnings.catch_warnings():  # stepping without optimiser steps is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(global_step):
            fresh.step()
    return fresh
