"""Training as plain functions: one call trains a configuration on a dataset folder.

:func:`train` does, in order:

1. resolve the device (:mod:`livseg.train.device`) and join a torchrun process group if any
   (:mod:`livseg.train.distributed`);
2. find the cases (:func:`livseg.io.datasets.discover_cases`) and split them (``fold`` of
   ``folds`` by patient, or an explicit split; without either every case is used for training
   *and* validation, which only monitors the fit);
3. build or reuse the slice cache of the configuration's pre-processing (rank 0 builds);
4. train each stage: one for ``unet``/``runet``/``densefcn``; for ``crunet`` level 1, then level 2
   on the processed outputs of the trained, frozen level 1 (computed once for every level-2
   slice, see :func:`level1_masks`).

Each stage runs epochs of ``train.iterations_per_epoch`` iterations (or one pass over the
slices): Adam/AdamW, a per-iteration learning-rate schedule, autocast + GradScaler on CUDA only,
gradient clipping; after every ``train.val_every`` epochs the validation cases' cached slices are
predicted, stacked back into per-case volumes (at the working resolution, with the working
spacing) and scored with the LiTS metric set (:mod:`livseg.metrics.lits`). The best checkpoint
(by ``train.monitor``) and the last one are written after every epoch (atomically; see
:mod:`livseg.train.checkpoint`), so a killed run resumed with ``resume=True`` loses at most the
epoch in progress. Early stopping, per-epoch reseeding (a resumed run draws the same batches as
an uninterrupted one), a CSV log and an optional TensorBoard log complete it.

Run folder (``out``)::

    config.json            the resolved configuration of the run
    splits.json            the fold split (when ``fold`` is given)
    cache/                 slice cache (unless ``cache`` points elsewhere)
    [level1/ level2/]      CR-U-Net: one stage folder each, holding what follows
    best/ last/            checkpoint folders (model.safetensors, config.json, state.pt, ...)
    log.csv                one row per epoch
    tensorboard/           TensorBoard events (when tensorboard is installed)
    val_cases.csv          LiTS metrics per validation case of the best checkpoint
    val_summary.json       their summary
    result.json            what the stage achieved (lets a resumed run skip finished stages)

Only rank 0 writes files. Progress is reported through a callback (the CLI draws the bar).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler

from livseg.data.cache import CachedCase, SliceCache, build_slice_cache
from livseg.data.dataset import SliceDataset
from livseg.device import amp_enabled, resolve_device
from livseg.errors import InputError, LivsegError, OutputExistsError
from livseg.io.atomic import write_text_atomic
from livseg.models.checkpoint import find_checkpoint, load_info, load_weights
from livseg.train.checkpoint import (
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from livseg.train.config import Config, ScheduleConfig, config_to_dict
from livseg.train.distributed import (
    DistInfo,
    DistributedWeightedSampler,
    all_reduce_mean,
    barrier,
    broadcast_object,
    check_parameters_in_sync,
    env_info,
    init_distributed,
)

logger = logging.getLogger("livseg.train.trainer")

__all__ = [
    "TrainProgress",
    "ProgressCallback",
    "StageResult",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "learning_rate",
    "level1_masks",
    "stages_of",
]

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
    """

    out: Path
    stages: tuple[StageResult, ...]
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]

    @property
    def final(self) -> StageResult:
        """The last stage (for CR-U-Net level 2: the complete cascade)."""
        return self.stages[-1]

    @property
    def checkpoint(self) -> Path:
        """The best checkpoint of the final stage: the trained model."""
        return self.final.best


# --- small pieces ----------------------------------------------------------------------------
def stages_of(config: Config) -> list[str]:
    """Stages a configuration trains: ``["model"]``, or for CR-U-Net per ``train.stage``."""
    if config.model.name != "crunet":
        return ["model"]
    return ["level1", "level2"] if config.train.stage == "all" else [config.train.stage]


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
        lr *= 0.01 + 0.99 * step / warm
    return float(lr)


def _seed_all(seed: int, epoch: int, rank: int) -> None:
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


class _Level2Dataset(SliceDataset):
    """A :class:`SliceDataset` that also returns the processed level-1 mask of each slice.

    The mask follows the image's geometric augmentation (nearest interpolation, like a label) and
    is left out of the intensity jitter.
    """

    def __init__(
        self,
        cache: SliceCache,
        case_ids: Sequence[str],
        augment,
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


# --- the run context ---------------------------------------------------------------------------
@dataclass
class _Run:
    config: Config
    out: Path
    device: torch.device
    dist: DistInfo
    cache: SliceCache
    train_ids: list[str]
    val_ids: list[str]
    resume: bool
    progress: ProgressCallback | None


def _forward_fn(model: nn.Module, net: nn.Module, stage: str) -> Callable[..., Tensor]:
    """(x, mask) -> logits of the trained network (``net`` may be DDP-wrapped)."""
    if stage == "level2":

        def fwd(x: Tensor, mask: Tensor | None) -> Tensor:
            return net(model.level2_input(x, mask))
    else:

        def fwd(x: Tensor, mask: Tensor | None) -> Tensor:
            return net(x)

    return fwd


def _loss_value(
    loss_fn: nn.Module,
    logits: Tensor,
    label: Tensor,
    weight: Tensor | None,
    target: str,
    uses_weight: bool,
) -> Tensor:
    y = _match_size(_binary_target(label, target), tuple(logits.shape[-2:]))
    w = _match_size(weight, tuple(logits.shape[-2:])) if uses_weight else None
    return loss_fn(logits.float(), y, w)


@torch.no_grad()
def _validate(
    run: _Run,
    fwd: Callable[..., Tensor],
    net: nn.Module,
    loss_fn: nn.Module,
    uses_weight: bool,
    masks: dict[str, np.ndarray] | None,
    amp: bool,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Predict the validation cases' cached slices and score them with the LiTS metric set."""
    from livseg.metrics.lits import evaluate_cases
    from livseg.models import foreground_probability

    t = run.config.train
    was_training = net.training
    net.eval()
    triples, loss_sum, n_items = [], 0.0, 0
    for cid in run.val_ids:
        case: CachedCase = run.cache[cid]
        img, lab = case.image, np.asarray(case.label)
        wmap = case.weight if uses_weight else None
        pred = np.zeros(lab.shape, dtype=bool)
        for i in range(0, lab.shape[0], t.val_batch_size):
            sl = slice(i, i + t.val_batch_size)
            x = torch.from_numpy(np.array(img[sl], dtype=np.float32)).to(run.device)
            m = (
                None
                if masks is None
                else torch.from_numpy(masks[cid][sl].astype(np.float32)).to(run.device)
            )
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logits = fwd(x, m)
            logits = logits.float()
            y = torch.from_numpy(lab[sl].astype(np.int64)).to(run.device)
            w = (
                None
                if wmap is None
                else torch.from_numpy(np.array(wmap[sl], dtype=np.float32)).to(run.device)
            )
            loss = _loss_value(loss_fn, logits, y, w, t.target, uses_weight)
            loss_sum += float(loss) * x.shape[0]
            n_items += x.shape[0]
            prob = foreground_probability(logits)
            if tuple(prob.shape[-2:]) != tuple(lab.shape[-2:]):
                prob = F.interpolate(
                    prob[:, None], size=lab.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
            pred[sl] = (prob > 0.5).cpu().numpy()
        if t.target == "liver":
            pred_lab = pred.astype(np.uint8)
        else:  # tumour model: scored inside the reference liver
            liver = lab >= 1
            pred_lab = liver.astype(np.uint8)
            pred_lab[pred & liver] = 2
        triples.append((pred_lab, lab, tuple(case.meta["working_spacing"])))
    net.train(was_training)
    result = evaluate_cases(triples, case_ids=list(run.val_ids))
    summary = {k: float(v) for k, v in result.summary.items()}
    summary["val_loss"] = loss_sum / max(n_items, 1)
    rows = [c.row() for c in result.cases]
    return summary, rows


def _score(summary: dict[str, float], config: Config) -> float:
    t = config.train
    if t.monitor == "neg_loss":
        return -summary["val_loss"]
    prefix = "liver" if t.target == "liver" else "tumor"
    return summary[f"{prefix}_{t.monitor}"]


class _Logs:
    """CSV (always) and TensorBoard (when installed) logs of a stage; rank 0 only."""

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
        text = _csv_text(rows, header=True)
        write_text_atomic(self.csv, text, overwrite=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed: TensorBoard logging disabled")
        else:
            self.tb = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"),
                purge_step=global_step if global_step > 0 else None,
            )

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.tb is not None and global_step % 10 == 0:
            self.tb.add_scalar("train/loss_step", loss, global_step)
            self.tb.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: dict[str, Any], global_step: int) -> None:
        if not self.enabled:
            return
        with open(self.csv, "a", newline="", encoding="utf-8") as fh:
            fh.write(_csv_text([row], header=False))
            fh.flush()
            os.fsync(fh.fileno())
        if self.tb is not None:
            for key, value in row.items():
                if (
                    isinstance(value, int | float) and key not in ("epoch",) and value == value
                ):  # skip NaN
                    self.tb.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _csv_text(rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _make_loader(dataset: SliceDataset, run: _Run) -> tuple[DataLoader, Any, int]:
    """DataLoader, its (distributed) sampler and the iterations per epoch."""
    t, d = run.config.train, run.dist
    if t.foreground_fraction > 0:
        n = (
            t.iterations_per_epoch * t.batch_size
            if t.iterations_per_epoch
            else math.ceil(len(dataset) / d.world_size)
        )
        weights = dataset.sample_weights(t.target, t.foreground_fraction)
        sampler = DistributedWeightedSampler(weights, n, d.rank, d.world_size, t.seed)
    else:
        sampler = DistributedSampler(
            dataset,
            num_replicas=d.world_size,
            rank=d.rank,
            shuffle=True,
            seed=t.seed,
            drop_last=False,
        )
    drop_last = len(sampler) >= t.batch_size
    loader = DataLoader(
        dataset,
        batch_size=t.batch_size,
        sampler=sampler,
        num_workers=t.num_workers,
        drop_last=drop_last,
        pin_memory=run.device.type == "cuda",
    )
    steps = t.iterations_per_epoch or len(loader)
    return loader, sampler, steps


def _batches(loader: DataLoader, sampler: Any, dataset: SliceDataset, epoch: int, steps: int):
    """``steps`` batches of ``epoch``, cycling through the sampler as often as needed."""
    n, p = 0, 0
    while True:
        key = epoch * 1000 + p
        sampler.set_epoch(key)
        dataset.set_epoch(key)
        for batch in loader:
            yield batch
            n += 1
            if n >= steps:
                return
        p += 1


# --- one stage ---------------------------------------------------------------------------------
def _run_stage(run: _Run, stage: str, run_dir: Path) -> StageResult:
    from livseg.losses import build_loss
    from livseg.models import build_model

    cfg, t, dev, d = run.config, run.config.train, run.device, run.dist
    main = d.is_main
    last_dir, best_dir, result_file = run_dir / "last", run_dir / "best", run_dir / "result.json"

    found_last = find_checkpoint(last_dir)
    if found_last is not None and not run.resume:
        raise OutputExistsError(
            f"{run_dir}: holds a training run (checkpoint {found_last}); "
            "use --resume to continue it or choose another --out"
        )
    state = load_state(found_last) if (run.resume and found_last is not None) else None
    if (
        state is not None
        and result_file.is_file()
        and (state.get("stopped_early") or int(state["epoch"]) >= t.epochs)
    ):
        logger.info("%s: stage %s already finished; skipping", run_dir, stage)
        return StageResult.from_dict(json.loads(result_file.read_text(encoding="utf-8")))

    _seed_all(t.seed, 0, 0)  # identical initial weights on every rank
    model = build_model(cfg.model.name, **cfg.model.options)
    if stage == "level1":
        model.set_stage("level1")
        net = model.level1
    elif stage == "level2":
        level1 = find_checkpoint(run.out / "level1" / "best")
        if level1 is None:
            raise InputError(
                f"{run.out / 'level1' / 'best'}: no trained level 1; train stage "
                "level1 first (train.stage=all or level1)"
            )
        load_weights(model, level1)
        model.set_stage("level2")
        net = model.level2
    else:
        net = model
    if state is not None:
        load_weights(model, found_last)
    model.to(dev)

    loss_fn = build_loss(cfg.loss.name, **cfg.loss.options).to(dev)
    uses_weight = bool(getattr(loss_fn, "uses_weight", False))
    if uses_weight and not cfg.data.weight_map:
        logger.info(
            "loss %s uses a weight map but data.weight_map is false: uniform weights", cfg.loss.name
        )
    masks = None
    if stage == "level2":
        t0 = time.perf_counter()
        masks = level1_masks(
            model,
            run.cache,
            run.train_ids + [c for c in run.val_ids if c not in run.train_ids],
            dev,
            t.val_batch_size,
        )
        logger.info(
            "level 2: processed level-1 masks of %d slices computed once in %.1f s",
            sum(m.shape[0] for m in masks.values()),
            time.perf_counter() - t0,
        )
        dataset: SliceDataset = _Level2Dataset(
            run.cache, run.train_ids, cfg.augment, t.seed, uses_weight, masks
        )
    else:
        dataset = SliceDataset(
            run.cache, run.train_ids, augment=cfg.augment, seed=t.seed, with_weight=uses_weight
        )
    if len(dataset) == 0:
        raise InputError(
            f"no training slices in the cache {run.cache.root} for cases {', '.join(run.train_ids)}"
        )
    loader, sampler, steps = _make_loader(dataset, run)
    total_steps = steps * t.epochs

    params = [p for p in net.parameters() if p.requires_grad]
    o = cfg.optimizer
    opt_cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    amp = amp_enabled(dev, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, global_step = 0, 0
    best_score, best_epoch, bad = -math.inf, 0, 0
    finished = stopped = False
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
        bad = int(state["bad_epochs"])
        stopped = bool(state.get("stopped_early", False))
        finished = stopped or start_epoch >= t.epochs  # train.epochs may have been raised
        set_rng_state(state["rng"])
        logger.info(
            "%s: resuming stage %s after epoch %d (step %d)",
            run_dir,
            stage,
            start_epoch,
            global_step,
        )

    ddp_net: nn.Module = net
    if d.enabled:
        ddp_net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    fwd = _forward_fn(model, ddp_net, stage)
    eval_fwd = _forward_fn(model, net, stage)

    logs = _Logs(run_dir, start_epoch, global_step, enabled=main)
    logger.info(
        "stage %s: %d training slices (%d cases), %d validation cases, %d iterations "
        "of %d slices per epoch and rank, %d rank(s), device %s%s",
        stage,
        len(dataset),
        len(run.train_ids),
        len(run.val_ids),
        steps,
        t.batch_size,
        d.world_size,
        dev,
        ", mixed precision" if amp else "",
    )
    try:
        epoch = start_epoch
        while not finished and epoch < t.epochs:
            _seed_all(t.seed, epoch + 1, d.rank)
            net.train()
            t_start = time.perf_counter()
            loss_sum, n_seen = 0.0, 0
            lr = o.lr
            for step, batch in enumerate(_batches(loader, sampler, dataset, epoch, steps), 1):
                lr = learning_rate(cfg.schedule, o.lr, global_step, total_steps, steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x = batch["image"].to(dev, non_blocking=True)
                mask = batch["mask"].to(dev, non_blocking=True) if "mask" in batch else None
                label = batch["label"].to(dev, non_blocking=True)
                weight = batch["weight"].to(dev, non_blocking=True) if "weight" in batch else None
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    logits = fwd(x, mask)
                loss = _loss_value(loss_fn, logits, label, weight, t.target, uses_weight)
                if not torch.isfinite(loss).item() and not amp:
                    raise TrainingDiverged(
                        f"{run_dir}: loss is {float(loss)} at epoch {epoch + 1}, iteration {step}"
                        "; lower optimizer.lr or set optimizer.grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if o.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                loss_sum += float(loss.detach())
                n_seen += x.shape[0]
                if main:
                    rate = n_seen * d.world_size / max(time.perf_counter() - t_start, 1e-9)
                    logs.step(global_step, float(loss.detach()), lr)
                    if run.progress is not None:
                        run.progress(
                            TrainProgress(
                                stage,
                                "train",
                                epoch + 1,
                                t.epochs,
                                step,
                                steps,
                                loss_sum / step,
                                rate,
                                lr,
                            )
                        )
            train_seconds = time.perf_counter() - t_start
            train_loss = all_reduce_mean(loss_sum / max(steps, 1), dev)
            rate = n_seen * d.world_size / max(train_seconds, 1e-9)

            do_val = (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs
            summary, rows = None, None
            if do_val and main:
                if run.progress is not None:
                    run.progress(
                        TrainProgress(
                            stage, "val", epoch + 1, t.epochs, steps, steps, train_loss, rate, lr
                        )
                    )
                summary, rows = _validate(run, eval_fwd, net, loss_fn, uses_weight, masks, amp)
            summary = broadcast_object(summary)
            improved = False
            if summary is not None:
                score = _score(summary, cfg)
                improved = score > best_score + t.min_delta or best_epoch == 0
                if improved:
                    best_score, best_epoch, bad = score, epoch + 1, 0
                else:
                    bad += 1
            epoch += 1
            stopped = bool(t.patience and bad >= t.patience and epoch < t.epochs)
            finished = stopped or epoch >= t.epochs
            info = {
                "epoch": epoch,
                "stage": stage,
                "monitor": t.monitor,
                "score": None if summary is None else _score(summary, cfg),
            }
            if main:
                if improved:
                    save_checkpoint(
                        best_dir,
                        model,
                        cfg,
                        state=None,
                        info={**info, "val_summary": summary, "val_cases": rows},
                    )
                state_out = {
                    "epoch": epoch,
                    "global_step": global_step,
                    "stage": stage,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad,
                    "finished": finished,
                    "stopped_early": stopped,
                    "rng": rng_state(),
                }
                save_checkpoint(last_dir, model, cfg, state=state_out, info=info)
                row = {
                    "epoch": epoch,
                    "stage": stage,
                    "lr": lr,
                    "train_loss": train_loss,
                    "score": info["score"],
                    "best_score": best_score,
                    "improved": int(improved),
                    "slices_per_s": round(rate, 3),
                    "seconds": round(time.perf_counter() - t_start, 3),
                }
                if summary is not None:
                    row["val_loss"] = summary["val_loss"]
                    row.update({k: summary.get(k) for k in LOG_COLUMNS if k in summary})
                logs.epoch(row, global_step)
                logger.info(
                    "stage %s epoch %d/%d: train loss %.4f, %s%s, %.1f slices/s",
                    stage,
                    epoch,
                    t.epochs,
                    train_loss,
                    "no validation" if summary is None else f"val {t.monitor} {info['score']:.4f}",
                    " (best)" if improved else "",
                    rate,
                )
                if run.progress is not None:
                    run.progress(
                        TrainProgress(
                            stage,
                            "epoch",
                            epoch,
                            t.epochs,
                            steps,
                            steps,
                            train_loss,
                            rate,
                            lr,
                            metrics=row,
                        )
                    )
            barrier()
            if stopped:
                logger.info(
                    "stage %s: early stopping after epoch %d (no improvement of %s in "
                    "%d validations)",
                    stage,
                    epoch,
                    t.monitor,
                    t.patience,
                )
        check_parameters_in_sync(net, dev)
        epochs_done = epoch
    finally:
        logs.close()

    result = None
    if main:
        best = find_checkpoint(best_dir)
        if best is None:
            raise LivsegError(f"{best_dir}: no best checkpoint was written")
        binfo = load_info(best)
        result = StageResult(
            stage=stage,
            run_dir=run_dir,
            best=best_dir,
            last=last_dir,
            best_epoch=best_epoch,
            best_score=best_score,
            epochs_done=epochs_done,
            stopped_early=stopped,
            summary=binfo.get("val_summary") or {},
            cases=binfo.get("val_cases") or [],
        )
        _write_val_reports(run_dir, result)
        write_text_atomic(
            result_file, json.dumps(result.to_dict(), indent=1) + "\n", overwrite=True
        )
        logger.info(
            "stage %s done: best epoch %d, %s %.4f; checkpoint %s",
            stage,
            best_epoch,
            t.monitor,
            best_score,
            best_dir,
        )
    result = broadcast_object(result)
    return result


def json_safe(value: Any) -> Any:
    """NaN -> None (JSON null), recursively, so that written JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _write_val_reports(run_dir: Path, result: StageResult) -> None:
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


# --- entry point ---------------------------------------------------------------------------------
def _check_run_folder(out: Path, config: Config, main: bool) -> None:
    """Record the run's configuration; warn when a resumed run's configuration changed."""
    saved = out / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text(encoding="utf-8"))
        new = config_to_dict(config)
        diff = sorted(
            f"{s}.{k}"
            for s in new
            if isinstance(new[s], dict)
            for k in set(new[s]) | set(old.get(s, {}) or {})
            if (old.get(s) or {}).get(k) != new[s].get(k)
        )
        if diff:
            logger.warning(
                "%s: configuration differs from the earlier run's: %s", out, ", ".join(diff)
            )
    if main:
        write_text_atomic(
            saved, json.dumps(config_to_dict(config), indent=1) + "\n", overwrite=True
        )


def train(
    config: Config,
    data: str | os.PathLike | Sequence[Any],
    out: str | os.PathLike,
    *,
    fold: int | None = None,
    folds: int = 5,
    split: dict[str, Sequence[str]] | None = None,
    cache: str | os.PathLike | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cache_progress: Callable[..., Any] | None = None,
) -> TrainResult:
    """Train a configuration from scratch (or resume it) on a dataset.

    Args:
        config: The resolved configuration (:func:`livseg.train.config.load_config`).
        data: Dataset folder or list file (any layout of
            :func:`livseg.io.datasets.discover_cases`), or a sequence of cases.
        out: Run folder (created); see the module docstring for its content.
        fold: Validate on fold ``fold`` (0-based) of ``folds`` patient-wise folds
            (:func:`livseg.data.splits.kfold_by_patient` with ``train.seed``); the rest trains.
        folds: Number of folds for ``fold``.
        split: Explicit ``{"train": [...], "val": [...]}`` case ids (overrides ``fold``).
        cache: Slice-cache root folder (default ``out/cache``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; default ``config.train.device``.
        resume: Continue the run in ``out`` from its last checkpoints (a finished stage is
            skipped); without it an existing run in ``out`` is an error.
        progress: Called on rank 0 with a :class:`TrainProgress` after every iteration, when
            validation starts and after every epoch.
        cache_progress: Progress wrapper for building the slice cache, called as
            ``cache_progress(iterable, total=n, desc=...)``.

    Returns:
        A :class:`TrainResult`; ``result.checkpoint`` is the trained model's folder.

    Raises:
        OutputExistsError: ``out`` holds a run and ``resume`` is False.
        InputError: Dataset problems, unknown case ids in ``split``, a missing level 1.
        TrainingDiverged: The loss became NaN/infinite.
        LivsegError: Other expected problems (device, configuration).
    """
    from livseg.data.splits import kfold_by_patient, save_splits
    from livseg.io.datasets import discover_cases

    out = Path(out)
    t = config.train
    dev = resolve_device(device or t.device, env_info().local_rank)
    d = init_distributed(dev)
    cases = discover_cases(data) if isinstance(data, str | os.PathLike) else list(data)
    ids = [c.case_id for c in cases]
    if split is None and fold is not None:
        if not 0 <= fold < folds:
            raise LivsegError(f"--fold {fold}: must be in 0..{folds - 1} (--folds {folds})")
        splits = kfold_by_patient(ids, folds, seed=t.seed)
        split = splits[fold]
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_splits(splits, out / "splits.json", overwrite=True, seed=t.seed, fold=fold)
    if split is None:
        logger.warning(
            "no --fold given: training on all %d cases and validating on the same "
            "cases (monitoring only, not an unbiased estimate)",
            len(ids),
        )
        train_ids, val_ids = list(ids), list(ids)
    else:
        train_ids, val_ids = [str(c) for c in split["train"]], [str(c) for c in split["val"]]
        unknown = sorted(set(train_ids + val_ids) - set(ids))
        if unknown:
            raise InputError(f"split names cases not in the dataset {data}: {', '.join(unknown)}")
        if not train_ids or not val_ids:
            raise InputError("a split needs at least one training and one validation case")
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _check_run_folder(out, config, True)
    barrier()
    used = [c for c in cases if c.case_id in set(train_ids) | set(val_ids)]
    cache_root = Path(cache) if cache is not None else out / "cache"
    if d.is_main:
        slice_cache = build_slice_cache(used, config.data, cache_root, progress=cache_progress)
    barrier()
    if not d.is_main:
        slice_cache = SliceCache.open(config.data, cache_root, [c.case_id for c in used])

    flags_before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.use_deterministic_algorithms(t.deterministic, warn_only=True)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = not t.deterministic
        run = _Run(config, out, dev, d, slice_cache, train_ids, val_ids, resume, progress)
        results = []
        stages = stages_of(config)
        for stage in stages:
            run_dir = out if stage == "model" else out / stage
            if d.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
            results.append(_run_stage(run, stage, run_dir))
    finally:
        torch.use_deterministic_algorithms(flags_before[0], warn_only=flags_before[1])
        torch.backends.cudnn.benchmark = flags_before[2]
    return TrainResult(
        out=out, stages=tuple(results), train_cases=tuple(train_ids), val_cases=tuple(val_ids)
    )
