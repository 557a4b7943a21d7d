"""K-fold cross-validation by patient: one command trains every fold and summarises them.

:func:`cross_validate` splits the cases with :func:`livseg.data.splits.kfold_by_patient`
(seed ``train.seed``), saves the split as ``splits.json``, trains fold k in ``out/fold<k>/`` with
:func:`livseg.train.trainer.train` on the others (all folds share one slice cache), and writes:

* ``cv_cases.csv``: the LiTS metrics of every case, from the fold where it was validated (best
  checkpoint of that fold), with a ``fold`` column;
* ``cv_folds.csv``: one row per fold (its LiTS summary), then a ``mean`` and an ``sd`` row;
* ``cv_summary.json``: per metric the mean and sample standard deviation (ddof 1) over folds and
  the per-fold values, plus the metric definitions' version.

Metrics are computed at the working resolution of the slice cache on the cached (selected)
slices of each validation case; full-resolution whole-volume scoring is ``livseg evaluate`` on
``livseg segment`` outputs. With ``resume=True`` finished folds are skipped and an interrupted
fold continues from its last checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livseg.errors import InputError
from livseg.io.atomic import write_text_atomic
from livseg.train.config import Config
from livseg.train.logs import json_safe
from livseg.train.results import ProgressCallback, TrainResult
from livseg.train.staging import stages_of
from livseg.train.trainer import train

logger = logging.getLogger("livseg.train.cv")

__all__ = ["CVResult", "cross_validate", "mean_sd"]


@dataclass(frozen=True)
class CVResult:
    """The outcome of :func:`cross_validate`.

    Attributes:
        out: The cross-validation folder.
        folds: One :class:`TrainResult` per fold.
        summary: ``{metric: {"mean": m, "sd": s, "per_fold": [...]}}`` over folds.
        splits: The folds' ``{"train": [...], "val": [...]}`` case ids.
    """

    out: Path
    folds: tuple[TrainResult, ...]
    summary: dict[str, dict[str, Any]]
    splits: tuple[dict[str, list[str]], ...]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than two values).

    NaN values are ignored (e.g. a metric undefined in one fold).
    """
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def cross_validate(
    config: Config,
    data: str | os.PathLike,
    out: str | os.PathLike,
    folds: int,
    *,
    cache: str | os.PathLike | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cache_progress: Callable[..., Any] | None = None,
    fold_callback: Callable[[int, int], None] | None = None,
) -> CVResult:
    """Cross-validate a configuration: train and score every fold, then summarise.

    Args:
        config: The resolved configuration.
        data: Dataset folder or list file (:func:`livseg.io.datasets.discover_cases`).
        out: Cross-validation folder (fold runs in ``out/fold<k>``).
        folds: Number of folds (2 <= folds <= number of patients).
        cache: Slice-cache root shared by the folds (default ``out/cache``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default ``config.train.device``).
        resume: Continue an interrupted cross-validation in ``out``.
        progress: Training progress callback (see :func:`livseg.train.trainer.train`).
        cache_progress: Progress wrapper for building the slice cache.
        fold_callback: Called as ``fold_callback(k, folds)`` before fold ``k`` starts.

    Returns:
        A :class:`CVResult`.

    Raises:
        OutputExistsError: ``out`` holds a cross-validation and ``resume`` is False.
        LivsegError: Bad ``folds``, dataset problems, training errors.
    """
    from livseg.data.splits import kfold_by_patient, load_splits, save_splits
    from livseg.io.datasets import discover_cases
    from livseg.metrics.lits import CASE_COLUMNS, DEFINITIONS_VERSION
    from livseg.train.distributed import barrier, env_info

    out = Path(out)
    main = env_info().rank == 0
    cases = discover_cases(data)
    ids = [c.case_id for c in cases]
    splits = kfold_by_patient(ids, folds, seed=config.train.seed)
    split_file = out / "splits.json"
    if split_file.exists():
        if not resume:
            from livseg.errors import OutputExistsError

            raise OutputExistsError(
                f"{out}: holds a cross-validation (splits.json); use "
                "--resume to continue it or choose another --out"
            )
        saved = load_splits(split_file)
        if saved != splits:
            raise InputError(
                f"{split_file}: the saved folds differ from the folds of this "
                "dataset, --folds and train.seed; use another --out"
            )
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        save_splits(splits, split_file, seed=config.train.seed, n_folds=folds, config=config.name)
    barrier()
    cache_root = Path(cache) if cache is not None else out / "cache"

    results: list[TrainResult] = []
    for k, split in enumerate(splits):
        if fold_callback is not None:
            fold_callback(k, folds)
        logger.info(
            "fold %d/%d: %d training cases, validation on %s",
            k + 1,
            folds,
            len(split["train"]),
            ", ".join(split["val"]),
        )
        results.append(
            train(
                config,
                cases,
                out / f"fold{k}",
                split=split,
                cache=cache_root,
                device=device,
                resume=resume,
                progress=progress,
                cache_progress=cache_progress,
            )
        )

    summary: dict[str, dict[str, Any]] = {}
    fold_rows: list[dict[str, Any]] = []
    case_rows: list[dict[str, Any]] = []
    for k, r in enumerate(results):
        fold_rows.append({"fold": k, "best_epoch": r.final.best_epoch, **r.final.summary})
        case_rows.extend({"fold": k, **row} for row in r.final.cases)
    keys = [
        k
        for k in results[0].final.summary
        if all(isinstance(r.final.summary.get(k), int | float) for r in results)
    ]
    for key in keys:
        per_fold = [float(r.final.summary[key]) for r in results]
        m, s = mean_sd(per_fold)
        summary[key] = {"mean": m, "sd": s, "per_fold": per_fold}
    if main:
        columns = ["fold", "best_epoch", *keys]
        rows = fold_rows + [
            {"fold": "mean", **{k: summary[k]["mean"] for k in keys}},
            {"fold": "sd", **{k: summary[k]["sd"] for k in keys}},
        ]
        write_text_atomic(out / "cv_folds.csv", _csv(rows, columns), overwrite=True)
        write_text_atomic(
            out / "cv_cases.csv", _csv(case_rows, ["fold", *CASE_COLUMNS]), overwrite=True
        )
        doc = {
            "config": config.name,
            "folds": folds,
            "stage": stages_of(config)[-1],
            "definitions_version": DEFINITIONS_VERSION,
            "resolution": "working resolution of the slice cache (data.size), selected slices",
            "checkpoints": [str(r.checkpoint) for r in results],
            "metrics": summary,
        }
        write_text_atomic(
            out / "cv_summary.json", json.dumps(json_safe(doc), indent=1) + "\n", overwrite=True
        )
        prefix = "liver" if config.train.target == "liver" else "tumor"
        key = f"{prefix}_dice_per_case"
        if key in summary:
            logger.info(
                "cross-validation %s: %s %.4f +- %.4f over %d folds",
                config.name,
                key,
                summary[key]["mean"],
                summary[key]["sd"],
                folds,
            )
    return CVResult(out=out, folds=tuple(results), summary=summary, splits=tuple(splits))
