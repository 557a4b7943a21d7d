"""Resume state of a training stage: what ``state.pt`` of the ``last`` checkpoint holds.

A stage's progress (:class:`StageState`: epochs and iterations done, best score, early-stopping
counter) is saved after every epoch with the optimiser, GradScaler, learning-rate scheduler and
random-generator states. A resumed stage restores all of them, so that it continues exactly as
an uninterrupted run would (same batches, same learning rates); see :mod:`livseg.train.trainer`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from livseg.checkpoint_spec import find_checkpoint
from livseg.errors import OutputExistsError
from livseg.train.checkpoint import load_state, rng_state, set_rng_state
from livseg.train.schedules import SchedulePlan, restore_scheduler

logger = logging.getLogger("livseg.train.resume")

__all__ = [
    "StagePaths",
    "StageState",
    "Optimisation",
    "find_resume_state",
    "stage_done",
    "restore",
    "resume_state",
]


@dataclass(frozen=True)
class StagePaths:
    """The files of a stage folder.

    Attributes:
        run_dir: The stage's folder.
        last: Last checkpoint folder (holds the resume state).
        best: Best checkpoint folder.
        result: ``result.json``, written when the stage is done.
    """

    run_dir: Path
    last: Path
    best: Path
    result: Path

    @classmethod
    def of(cls, run_dir: Path) -> StagePaths:
        return cls(run_dir, run_dir / "last", run_dir / "best", run_dir / "result.json")


@dataclass
class StageState:
    """Where a stage stands after ``epoch`` epochs.

    Attributes:
        epoch: Epochs done.
        global_step: Iterations done (all epochs).
        best_score: Best ``train.monitor`` value so far (-inf before the first validation).
        best_epoch: Epoch (1-based) of the best checkpoint; 0 before the first validation.
        bad_epochs: Validations since the last improvement.
        stopped: Early stopping ended the stage.
        finished: The stage needs no more epochs.
    """

    epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    finished: bool = False

    def record_validation(self, score: float, min_delta: float) -> bool:
        """Account for the validation of the epoch in progress; True when it improved.

        The first validation always counts as an improvement; a later one must beat the best
        score by more than ``min_delta``.
        """
        improved = score > self.best_score + min_delta or self.best_epoch == 0
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch + 1, 0
        else:
            self.bad_epochs += 1
        return improved

    def end_epoch(self, epochs: int, patience: int) -> None:
        """Close the epoch in progress; decide on early stopping (``patience`` 0 = never)."""
        self.epoch += 1
        self.stopped = bool(patience and self.bad_epochs >= patience and self.epoch < epochs)
        self.finished = self.stopped or self.epoch >= epochs


@dataclass
class Optimisation:
    """The optimiser, its learning-rate scheduler (and plan) and the GradScaler of a stage."""

    optimizer: Optimizer
    scheduler: LRScheduler
    plan: SchedulePlan
    scaler: torch.amp.GradScaler


def find_resume_state(paths: StagePaths, resume: bool) -> tuple[Path | None, dict[str, Any] | None]:
    """The last checkpoint and its resume state, when resuming.

    Returns:
        ``(last checkpoint folder, state)``, or ``(None, None)`` for a new stage.

    Raises:
        OutputExistsError: The stage folder holds a run and ``resume`` is False.
    """
    found = find_checkpoint(paths.last)
    if found is not None and not resume:
        raise OutputExistsError(
            f"{paths.run_dir}: holds a training run (checkpoint {found}); "
            "use --resume to continue it or choose another --out"
        )
    if found is None:
        return None, None
    return found, load_state(found)


def stage_done(saved: dict[str, Any] | None, paths: StagePaths, epochs: int) -> bool:
    """Whether a resumed stage is complete (finished and its ``result.json`` written)."""
    return (
        saved is not None
        and paths.result.is_file()
        and bool(saved.get("stopped_early") or int(saved["epoch"]) >= epochs)
    )


def restore(saved: dict[str, Any], opt: Optimisation, epochs: int) -> StageState:
    """Restore optimiser, scheduler, GradScaler and generators; return the stage's progress.

    Args:
        saved: The resume state (``state.pt``).
        opt: The stage's freshly built optimisation objects; ``opt.scheduler`` may be replaced
            (see :func:`livseg.train.schedules.restore_scheduler`).
        epochs: ``train.epochs`` now (it may have been raised since).
    """
    opt.optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):
        opt.scaler.load_state_dict(saved["scaler"])
    state = StageState(
        epoch=int(saved["epoch"]),
        global_step=int(saved["global_step"]),
        best_score=float(saved["best_score"]),
        best_epoch=int(saved["best_epoch"]),
        bad_epochs=int(saved["bad_epochs"]),
        stopped=bool(saved.get("stopped_early", False)),
    )
    state.finished = state.stopped or state.epoch >= epochs
    opt.scheduler = restore_scheduler(
        opt.optimizer, opt.scheduler, opt.plan, saved, state.global_step
    )
    set_rng_state(saved["rng"])
    return state


def resume_state(state: StageState, stage: str, opt: Optimisation) -> dict[str, Any]:
    """The resume state to save in the ``last`` checkpoint after an epoch."""
    return {
        "epoch": state.epoch,
        "global_step": state.global_step,
        "stage": stage,
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "schedule_plan": opt.plan.to_dict(),
        "scaler": opt.scaler.state_dict(),
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "finished": state.finished,
        "stopped_early": state.stopped,
        "rng": rng_state(),
    }
