"""What a training stage writes besides checkpoints: the CSV log, TensorBoard, validation reports.

* ``log.csv``: one row per epoch (:data:`LOG_COLUMNS`); a resumed stage first drops the rows of
  epochs it will redo, so every epoch is logged once;
* ``tensorboard/``: the same values and the per-iteration loss and learning rate, when
  tensorboard is installed (an optional extra);
* ``val_cases.csv`` / ``val_summary.json``: the LiTS metrics of the best checkpoint.

Only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from livseg.io.atomic import write_text_atomic
from livseg.train.results import StageResult

logger = logging.getLogger("livseg.train.logs")

__all__ = ["LOG_COLUMNS", "StageLogs", "json_safe", "write_val_reports"]

LOG_COLUMNS = (
    "epoch",
    "stage",
    "lr",
    "train_loss",
    "val_loss",
    "score",
    "best_score",
    "improved",
    "liver_dice_per_case",
    "liver_dice_global",
    "tumor_dice_per_case",
    "tumor_dice_global",
    "liver_assd",
    "liver_msd",
    "slices_per_s",
    "seconds",
)

TB_STEP_EVERY = 10
"""Per-iteration TensorBoard scalars are written every this many iterations."""


def _csv_text(rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _tensorboard_writer(run_dir: Path, global_step: int) -> Any:
    """A TensorBoard ``SummaryWriter`` in ``run_dir/tensorboard``, or None when not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: TensorBoard logging disabled")
        return None
    return SummaryWriter(
        log_dir=str(run_dir / "tensorboard"), purge_step=global_step if global_step > 0 else None
    )


class StageLogs:
    """CSV (always) and TensorBoard (when installed) logs of a stage; rank 0 only.

    Args:
        run_dir: The stage's folder.
        start_epoch: Epochs already done (rows of later epochs are dropped from ``log.csv``).
        global_step: Iterations already done (TensorBoard events after it are purged).
        enabled: False on ranks other than 0: nothing is written.
    """

    def __init__(self, run_dir: Path, start_epoch: int, global_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.csv = run_dir / "log.csv"
        self.tb = None
        if not enabled:
            return
        rows = []
        if self.csv.exists():  # resume: drop rows of epochs that will be redone
            with open(self.csv, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= start_epoch]
        write_text_atomic(self.csv, _csv_text(rows, header=True), overwrite=True)
        self.tb = _tensorboard_writer(run_dir, global_step)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        """Record one iteration's loss and learning rate (TensorBoard only)."""
        if self.tb is not None and global_step % TB_STEP_EVERY == 0:
            self.tb.add_scalar("train/loss_step", loss, global_step)
            self.tb.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's row to ``log.csv`` (flushed to disk) and to TensorBoard."""
        if not self.enabled:
            return
        with open(self.csv, "a", newline="", encoding="utf-8") as fh:
            fh.write(_csv_text([row], header=False))
            fh.flush()
            os.fsync(fh.fileno())
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "epoch" and value == value:  # no NaN
                    self.tb.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def json_safe(value: Any) -> Any:
    """NaN -> None (JSON null), recursively, so that written JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_val_reports(run_dir: Path, result: StageResult) -> None:
    """Write ``val_cases.csv`` and ``val_summary.json`` of a stage's best checkpoint."""
    from livseg.metrics.lits import CASE_COLUMNS, DEFINITIONS_VERSION

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CASE_COLUMNS), extrasaction="ignore")
    w.writeheader()
    w.writerows(result.cases)
    write_text_atomic(run_dir / "val_cases.csv", buf.getvalue(), overwrite=True)
    doc = {
        "definitions_version": DEFINITIONS_VERSION,
        "best_epoch": result.best_epoch,
        "resolution": "working resolution of the slice cache (data.size), selected slices",
        "summary": result.summary,
    }
    write_text_atomic(
        run_dir / "val_summary.json", json.dumps(json_safe(doc), indent=1) + "\n", overwrite=True
    )
