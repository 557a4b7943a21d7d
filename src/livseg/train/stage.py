"""One training stage: build it, resume it, run its epochs, write its results.

:func:`run_stage` trains one stage of a run (:func:`livseg.train.trainer.train` calls it for
each of :func:`livseg.train.staging.stages_of`): the stage's model and data
(:mod:`livseg.train.staging`), optimiser and learning-rate scheduler (:mod:`livseg.train.loop`,
:mod:`livseg.train.schedules`), restored from the last checkpoint when resuming
(:mod:`livseg.train.resume`); then per epoch: train (:func:`livseg.train.loop.train_epoch`),
validate when due (:mod:`livseg.train.validation`), early-stopping bookkeeping, best and last
checkpoints, a ``log.csv`` row (:mod:`livseg.train.logs`). Only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from livseg.checkpoint_spec import find_checkpoint, load_info
from livseg.device import amp_enabled, cpu_bf16_enabled
from livseg.distributed import barrier, broadcast_object
from livseg.errors import InputError, LivsegError
from livseg.infer.backend import memory_format
from livseg.io.atomic import write_text_atomic
from livseg.models.checkpoint import load_weights
from livseg.train.checkpoint import save_checkpoint
from livseg.train.config import Config
from livseg.train.distributed import check_parameters_in_sync
from livseg.train.logs import LOG_COLUMNS, StageLogs, write_val_reports
from livseg.train.loop import (
    EpochStats,
    OnStep,
    Run,
    Trainee,
    build_optimisation,
    make_loader,
    seed_all,
    train_epoch,
)
from livseg.train.results import StageResult, TrainProgress
from livseg.train.resume import (
    Optimisation,
    StagePaths,
    StageState,
    find_resume_state,
    restore,
    resume_state,
    stage_done,
)
from livseg.train.staging import forward_fn, stage_dataset, stage_network
from livseg.train.validation import score, validate

logger = logging.getLogger("livseg.train.stage")

__all__ = ["run_stage"]


# --- one stage: building it -----------------------------------------------------------------------
def _loss(config: Config, device: torch.device) -> tuple[nn.Module, bool]:
    """The configured loss on ``device`` and whether it takes the weight map."""
    from livseg.losses import build_loss

    loss_fn = build_loss(config.loss.name, **config.loss.options).to(device)
    uses_weight = bool(getattr(loss_fn, "uses_weight", False))
    if uses_weight and not config.data.weight_map:
        logger.info(
            "loss %s uses a weight map but data.weight_map is false: uniform weights",
            config.loss.name,
        )
    return loss_fn, uses_weight


def _prepare(run: Run, stage: str, last: Path | None) -> Trainee:
    """Model (resumed from ``last`` when given), loss, data and forward functions of a stage."""
    cfg, dev = run.config, run.device
    seed_all(cfg.train.seed, 0, 0)  # identical initial weights on every rank
    model, net = stage_network(cfg, stage, run.out)
    if last is not None:
        load_weights(model, last)
    model.to(dev)
    cpu_bf16 = cpu_bf16_enabled(dev, cfg.train.amp_cpu)
    if cpu_bf16:
        model.to(memory_format=memory_format(5 if cfg.data.pipeline == "coarse" else 4))
    loss_fn, uses_weight = _loss(cfg, dev)
    ids = (run.train_ids, run.val_ids)
    dataset, masks = stage_dataset(cfg, stage, model, run.cache, ids, dev, uses_weight)
    if len(dataset) == 0:
        raise InputError(
            f"no training slices in the cache {run.cache.root} for cases {', '.join(run.train_ids)}"
        )
    loader, sampler, steps = make_loader(dataset, cfg.train, run.dist, dev)
    ddp_net: nn.Module = net
    if run.dist.enabled:
        ddp_net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    return Trainee(
        model=model,
        net=net,
        fwd=forward_fn(model, ddp_net, stage),
        eval_fwd=forward_fn(model, net, stage),
        loss_fn=loss_fn,
        uses_weight=uses_weight,
        dataset=dataset,
        loader=loader,
        sampler=sampler,
        steps=steps,
        masks=masks,
        amp=amp_enabled(dev, cfg.train.amp),
        cpu_bf16=cpu_bf16,
    )


def _log_start(run: Run, stage: str, trainee: Trainee) -> None:
    t = run.config.train
    logger.info(
        "stage %s: %d training slices (%d cases), %d validation cases, %d iterations "
        "of %d slices per epoch and rank, %d rank(s), device %s%s",
        stage,
        len(trainee.dataset),
        len(run.train_ids),
        len(run.val_ids),
        trainee.steps,
        t.batch_size,
        run.dist.world_size,
        run.device,
        ", mixed precision" if trainee.amp else ", bfloat16 autocast" if trainee.cpu_bf16 else "",
    )


# --- one stage: an epoch --------------------------------------------------------------------------
def _report(
    run: Run,
    stage: str,
    phase: Literal["val", "epoch"],
    epoch: int,
    steps: int,
    stats: EpochStats,
    **extra: Any,
) -> None:
    """Report validation start or epoch end to the progress callback."""
    if run.progress is not None:
        run.progress(
            TrainProgress(
                stage,
                phase,
                epoch,
                run.config.train.epochs,
                steps,
                steps,
                stats.loss,
                stats.slices_per_s,
                stats.lr,
                **extra,
            )
        )


def _on_step(run: Run, stage: str, state: StageState, logs: StageLogs, steps: int) -> OnStep:
    """The per-iteration report: TensorBoard and the progress callback, on rank 0."""

    def report(step: int, loss: float, mean_loss: float, lr: float, rate: float) -> None:
        if not run.dist.is_main:
            return
        logs.step(state.global_step, loss, lr)
        if run.progress is not None:
            epochs = run.config.train.epochs
            run.progress(
                TrainProgress(
                    stage, "train", state.epoch + 1, epochs, step, steps, mean_loss, rate, lr
                )
            )

    return report


def _validation(
    run: Run, stage: str, trainee: Trainee, state: StageState, stats: EpochStats
) -> tuple[dict[str, float] | None, list[dict[str, Any]] | None]:
    """Validate when due (every ``train.val_every`` epochs and after the last), on rank 0."""
    t = run.config.train
    epoch = state.epoch + 1
    summary, rows = None, None
    if (epoch % t.val_every == 0 or epoch == t.epochs) and run.dist.is_main:
        _report(run, stage, "val", epoch, trainee.steps, stats)
        summary, rows = validate(run, trainee)
    return broadcast_object(summary), rows


def _epoch_row(
    stage: str,
    state: StageState,
    stats: EpochStats,
    summary: dict[str, float] | None,
    value: float | None,
    improved: bool,
) -> dict[str, Any]:
    """The ``log.csv`` row of the epoch just finished."""
    row = {
        "epoch": state.epoch,
        "stage": stage,
        "lr": stats.lr,
        "train_loss": stats.loss,
        "score": value,
        "best_score": state.best_score,
        "improved": int(improved),
        "slices_per_s": round(stats.slices_per_s, 3),
        "seconds": round(time.perf_counter() - stats.started, 3),
    }
    if summary is not None:
        row["val_loss"] = summary["val_loss"]
        row.update({k: summary.get(k) for k in LOG_COLUMNS if k in summary})
    return row


@dataclass(frozen=True)
class _Validated:
    """An epoch's validation: LiTS summary, per-case rows, monitored score, improvement."""

    summary: dict[str, float] | None
    rows: list[dict[str, Any]] | None
    score: float | None
    improved: bool


def _save_epoch(
    run: Run,
    stage: str,
    paths: StagePaths,
    trainee: Trainee,
    opt: Optimisation,
    state: StageState,
    val: _Validated,
) -> None:
    """Write the best checkpoint (when improved) and the last one (with the resume state)."""
    cfg = run.config
    info = {"epoch": state.epoch, "stage": stage, "monitor": cfg.train.monitor, "score": val.score}
    if val.improved:
        save_checkpoint(
            paths.best,
            trainee.model,
            cfg,
            state=None,
            info={**info, "val_summary": val.summary, "val_cases": val.rows},
        )
    state_out = resume_state(state, stage, opt)
    save_checkpoint(paths.last, trainee.model, cfg, state=state_out, info=info)


def _epoch(
    run: Run,
    stage: str,
    paths: StagePaths,
    trainee: Trainee,
    opt: Optimisation,
    state: StageState,
    logs: StageLogs,
) -> None:
    """Train, validate, checkpoint and log one epoch; update ``state``."""
    t = run.config.train
    on_step = _on_step(run, stage, state, logs, trainee.steps)
    stats = train_epoch(run, trainee, opt, state, on_step, paths.run_dir)
    summary, rows = _validation(run, stage, trainee, state, stats)
    value = None if summary is None else score(summary, t)
    improved = value is not None and state.record_validation(value, t.min_delta)
    state.end_epoch(t.epochs, t.patience)
    if run.dist.is_main:
        val = _Validated(summary, rows, value, improved)
        _save_epoch(run, stage, paths, trainee, opt, state, val)
        row = _epoch_row(stage, state, stats, summary, value, improved)
        logs.epoch(row)
        logger.info(
            "stage %s epoch %d/%d: train loss %.4f, %s%s, %.1f slices/s",
            stage,
            state.epoch,
            t.epochs,
            stats.loss,
            "no validation" if value is None else f"val {t.monitor} {value:.4f}",
            " (best)" if improved else "",
            stats.slices_per_s,
        )
        _report(run, stage, "epoch", state.epoch, trainee.steps, stats, metrics=row)
    barrier()
    if state.stopped:
        logger.info(
            "stage %s: early stopping after epoch %d (no improvement of %s in %d validations)",
            stage,
            state.epoch,
            t.monitor,
            t.patience,
        )


# --- one stage: the whole of it -------------------------------------------------------------------
def _finish(run: Run, stage: str, paths: StagePaths, state: StageState) -> StageResult:
    """Write the stage's reports and ``result.json`` (rank 0); every rank gets the result."""
    result = None
    if run.dist.is_main:
        if find_checkpoint(paths.best) is None:
            raise LivsegError(f"{paths.best}: no best checkpoint was written")
        best_info = load_info(paths.best)
        result = StageResult(
            stage=stage,
            run_dir=paths.run_dir,
            best=paths.best,
            last=paths.last,
            best_epoch=state.best_epoch,
            best_score=state.best_score,
            epochs_done=state.epoch,
            stopped_early=state.stopped,
            summary=best_info.get("val_summary") or {},
            cases=best_info.get("val_cases") or [],
        )
        write_val_reports(paths.run_dir, result)
        text = json.dumps(result.to_dict(), indent=1) + "\n"
        write_text_atomic(paths.result, text, overwrite=True)
        logger.info(
            "stage %s done: best epoch %d, %s %.4f; checkpoint %s",
            stage,
            state.best_epoch,
            run.config.train.monitor,
            state.best_score,
            paths.best,
        )
    return broadcast_object(result)


def run_stage(run: Run, stage: str, run_dir: Path) -> StageResult:
    """Train one stage in ``run_dir`` (resuming it, or skipping it when finished).

    Args:
        run: What the run's stages share.
        stage: ``"model"``, ``"level1"`` or ``"level2"``.
        run_dir: The stage's folder (created).

    Returns:
        The stage's result (on every rank).

    Raises:
        OutputExistsError: The folder holds a run and ``run.resume`` is False.
        InputError: No training slices; stage ``level2`` without a trained level 1.
        TrainingDiverged: The loss became NaN/infinite.
    """
    t = run.config.train
    paths = StagePaths.of(run_dir)
    if run.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    last, saved = find_resume_state(paths, run.resume)
    if stage_done(saved, paths, t.epochs):
        logger.info("%s: stage %s already finished; skipping", run_dir, stage)
        return StageResult.from_dict(json.loads(paths.result.read_text(encoding="utf-8")))
    trainee = _prepare(run, stage, last)
    params = [p for p in trainee.net.parameters() if p.requires_grad]
    opt = build_optimisation(params, run.config, trainee.amp, trainee.steps)
    state = StageState()
    if saved is not None:
        state = restore(saved, opt, t.epochs)
        logger.info(
            "%s: resuming stage %s after epoch %d (step %d)",
            run_dir,
            stage,
            state.epoch,
            state.global_step,
        )
    logs = StageLogs(run_dir, state.epoch, state.global_step, enabled=run.dist.is_main)
    _log_start(run, stage, trainee)
    try:
        while not state.finished and state.epoch < t.epochs:
            _epoch(run, stage, paths, trainee, opt, state, logs)
        check_parameters_in_sync(trainee.net, run.device)
    finally:
        logs.close()
    return _finish(run, stage, paths, state)
