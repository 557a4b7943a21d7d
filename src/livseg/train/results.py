"""What training reports: progress events, stage and run results, the divergence error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from livseg.errors import LivsegError

ENSEMBLE_DIR = "ensemble"
"""The run sub-folder holding the best checkpoint of each ``train.members`` member."""

__all__ = [
    "TrainingDiverged",
    "TrainProgress",
    "ProgressCallback",
    "StageResult",
    "TrainResult",
]


class TrainingDiverged(LivsegError):
    """The loss became NaN or infinite (lower the learning rate or enable gradient clipping)."""


@dataclass(frozen=True)
class TrainProgress:
    """One progress report, given to the ``progress`` callback on rank 0.

    Attributes:
        stage: ``"model"``, ``"level1"`` or ``"level2"``.
        phase: ``"train"`` (after each iteration), ``"val"`` (validation starts) or ``"epoch"``
            (epoch finished, ``metrics`` set).
        epoch: Epoch number, 1-based.
        epochs: Epochs planned for the stage.
        step: Iteration within the epoch, 1-based.
        steps: Iterations per epoch.
        loss: Mean training loss of the epoch so far.
        slices_per_s: Training throughput of all ranks together.
        lr: Current learning rate.
        metrics: At ``phase == "epoch"``: the row written to ``log.csv``.
    """

    stage: str
    phase: Literal["train", "val", "epoch"]
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    slices_per_s: float
    lr: float
    metrics: dict[str, Any] | None = None


ProgressCallback = Callable[[TrainProgress], None]


@dataclass(frozen=True)
class StageResult:
    """The outcome of one training stage.

    Attributes:
        stage: ``"model"``, ``"level1"`` or ``"level2"``.
        run_dir: The stage's folder.
        best: Best checkpoint folder (load it with :func:`livseg.train.load_model`).
        last: Last checkpoint folder.
        best_epoch: Epoch (1-based) of the best checkpoint.
        best_score: Its ``train.monitor`` value.
        epochs_done: Epochs trained.
        stopped_early: Whether early stopping ended the stage.
        summary: LiTS summary (:func:`livseg.metrics.lits.summarize`) of the best checkpoint on
            the validation cases, at the working resolution, plus ``val_loss``.
        cases: Per-validation-case metric rows of the best checkpoint.
    """

    stage: str
    run_dir: Path
    best: Path
    last: Path
    best_epoch: int
    best_score: float
    epochs_done: int
    stopped_early: bool
    summary: dict[str, float] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "run_dir": str(self.run_dir),
            "best": str(self.best),
            "last": str(self.last),
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "epochs_done": self.epochs_done,
            "stopped_early": self.stopped_early,
            "summary": self.summary,
            "cases": self.cases,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        return cls(
            stage=d["stage"],
            run_dir=Path(d["run_dir"]),
            best=Path(d["best"]),
            last=Path(d["last"]),
            best_epoch=int(d["best_epoch"]),
            best_score=float(d["best_score"]),
            epochs_done=int(d["epochs_done"]),
            stopped_early=bool(d["stopped_early"]),
            summary=dict(d["summary"]),
            cases=list(d["cases"]),
        )


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        out: The run folder.
        stages: One :class:`StageResult` per stage run, in order.
        train_cases: Case ids trained on.
        val_cases: Case ids validated on.
        members: With ``train.members`` > 1, each member's result (``stages`` holds theirs in
            order); empty for a single network.
    """

    out: Path
    stages: tuple[StageResult, ...]
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    members: tuple[TrainResult, ...] = ()

    @property
    def final(self) -> StageResult:
        """The last stage (for CR-U-Net level 2: the complete cascade)."""
        return self.stages[-1]

    @property
    def checkpoint(self) -> Path:
        """The trained model: the best checkpoint of the final stage, or the members' ensemble
        folder (``out/ensemble``, a checkpoint per member)."""
        return self.out / ENSEMBLE_DIR if self.members else self.final.best
