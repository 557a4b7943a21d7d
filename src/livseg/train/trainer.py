"""Training as plain functions: one call trains a configuration on a dataset folder.

:func:`train` does, in order:

1. resolve the device (:mod:`livseg.device`) and join a torchrun process group if any
   (:mod:`livseg.train.distributed`);
2. find the cases (:func:`livseg.io.datasets.discover_cases`) and split them (``fold`` of
   ``folds`` by patient, or an explicit split; without either every case is used for training
   *and* validation, which only monitors the fit);
3. build or reuse the slice cache of the configuration's pre-processing (rank 0 builds);
4. train each stage (:func:`livseg.train.stage.run_stage`; the stages come from
   :mod:`livseg.train.staging`): one for ``unet``/``runet``/``densefcn``; for ``crunet`` level 1,
   then level 2 on the processed outputs of the trained, frozen level 1.

Each stage runs epochs (:mod:`livseg.train.loop`) of ``train.iterations_per_epoch`` iterations
(or one pass over the slices): Adam/AdamW, a per-iteration learning-rate schedule
(:mod:`livseg.train.schedules`), float16 autocast + GradScaler on CUDA (``train.amp``) or bfloat16
autocast on the CPU (``train.amp_cpu``), gradient clipping; after every
``train.val_every`` epochs the validation cases are scored with the LiTS metric set
(:mod:`livseg.train.validation`). The best checkpoint (by ``train.monitor``) and the last one are
written after every epoch (atomically; see :mod:`livseg.train.checkpoint`), the last one with the
resume state (:mod:`livseg.train.resume`), so a killed run resumed with ``resume=True`` loses at
most the epoch in progress and then continues as an uninterrupted run would. Early stopping, a
CSV log and an optional TensorBoard log (:mod:`livseg.train.logs`) complete it.

Run folder (``out``)::

    config.json            the resolved configuration of the run
    splits.json            the fold split (when ``fold`` is given)
    cache/                 slice cache (unless ``cache`` points elsewhere)
    [level1/ level2/]      CR-U-Net: one stage folder each, holding what follows
    best/ last/            checkpoint folders (model.safetensors, config.json, state.pt, ...)
    [member<i>/ ensemble/] ``train.members`` > 1: one run folder as this one per member, and
                           the ensemble of their best checkpoints (``ensemble/member<i>/``)
    log.csv                one row per epoch
    tensorboard/           TensorBoard events (when tensorboard is installed)
    val_cases.csv          LiTS metrics per validation case of the best checkpoint
    val_summary.json       their summary
    result.json            what the stage achieved (lets a resumed run skip finished stages)

Only rank 0 writes files. Progress is reported through a callback (the CLI draws the bar).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from livseg.data.cache import SliceCache, build_slice_cache
from livseg.data.volumes import VolumeCache, build_volume_cache
from livseg.device import resolve_device
from livseg.distributed import barrier, env_info, init_distributed
from livseg.errors import InputError, LivsegError
from livseg.io.atomic import write_text_atomic
from livseg.train.config import Config, config_to_dict, with_defaults
from livseg.train.loop import Run
from livseg.train.results import ENSEMBLE_DIR, ProgressCallback, TrainResult
from livseg.train.stage import run_stage
from livseg.train.staging import stage_dir, stages_of

logger = logging.getLogger("livseg.train.trainer")

__all__ = ["train"]


# --- entry point ----------------------------------------------------------------------------------
def _check_run_folder(out: Path, config: Config) -> None:
    """Record the run's configuration; warn when a resumed run's configuration changed."""
    saved = out / "config.json"
    new = config_to_dict(config)
    if saved.exists():
        old = with_defaults(json.loads(saved.read_text(encoding="utf-8")))
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
    write_text_atomic(saved, json.dumps(new, indent=1) + "\n", overwrite=True)


def _fold_split(
    ids: list[str], fold: int, folds: int, seed: int, out: Path, is_main: bool
) -> dict[str, list[str]]:
    """Fold ``fold`` of ``folds`` patient-wise folds; rank 0 saves them as ``splits.json``."""
    from livseg.data.splits import kfold_by_patient, save_splits

    if not 0 <= fold < folds:
        raise LivsegError(f"--fold {fold}: must be in 0..{folds - 1} (--folds {folds})")
    splits = kfold_by_patient(ids, folds, seed=seed)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_splits(splits, out / "splits.json", overwrite=True, seed=seed, fold=fold)
    return splits[fold]


def member_config(config: Config, index: int) -> Config:
    """Member ``index`` of a ``train.members`` ensemble: seed ``train.seed + index``, one member."""
    t = dataclasses.replace(config.train, seed=config.train.seed + index, members=1)
    return config.replace(train=t)


def _write_ensemble(folder: Path, checkpoints: list[Path]) -> None:
    """``folder/member<i>/``: a copy of each member's best checkpoint (no resume state), written
    to a temporary folder first and renamed into place (replacing an earlier one)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    for i, ckpt in enumerate(checkpoints):
        dst = tmp / f"member{i}"
        dst.mkdir()
        for f in ckpt.iterdir():
            if f.is_file() and f.name != "state.pt":
                shutil.copy2(f, dst / f.name)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    logger.info("%s: ensemble of %d members", folder, len(checkpoints))


def _checked_split(
    split: dict[str, Sequence[str]], ids: list[str], data: Any
) -> tuple[list[str], list[str]]:
    """Training and validation ids of an explicit split, checked against the dataset."""
    train_ids, val_ids = [str(c) for c in split["train"]], [str(c) for c in split["val"]]
    unknown = sorted(set(train_ids + val_ids) - set(ids))
    if unknown:
        raise InputError(f"split names cases not in the dataset {data}: {', '.join(unknown)}")
    if not train_ids or not val_ids:
        raise InputError("a split needs at least one training and one validation case")
    return train_ids, val_ids


def _slice_cache(
    cases: list[Any], config: Config, root: Path, is_main: bool, progress: Callable[..., Any] | None
) -> SliceCache | VolumeCache:
    """Rank 0 builds (or reuses) the cache; the other ranks open it afterwards.

    Slice pipelines get a memory-mapped slice cache, the coarse 3-D pipeline a volume cache.
    """
    if config.data.pipeline == "coarse":
        if is_main:
            build_volume_cache(cases, root, config.data)
        barrier()
        return build_volume_cache(cases, root, config.data)  # every case fresh: loads only
    if is_main:
        cache = build_slice_cache(cases, config.data, root, progress=progress)
    barrier()
    if not is_main:
        cache = SliceCache.open(config.data, root, [c.case_id for c in cases])
    return cache


@contextlib.contextmanager
def _torch_flags(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Set torch's determinism flags for the run; restore them afterwards."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not deterministic
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


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
        progress: Called on rank 0 with a :class:`~livseg.train.results.TrainProgress` after
            every iteration, when validation starts and after every epoch.
        cache_progress: Progress wrapper for building the slice cache, called as
            ``cache_progress(iterable, total=n, desc=...)``.

    Returns:
        A :class:`~livseg.train.results.TrainResult`; ``result.checkpoint`` is the trained
        model's folder.

    Raises:
        OutputExistsError: ``out`` holds a run and ``resume`` is False.
        InputError: Dataset problems, unknown case ids in ``split``, a missing level 1.
        TrainingDiverged: The loss became NaN/infinite.
        LivsegError: Other expected problems (device, configuration).
    """
    from livseg.io.datasets import discover_cases

    out = Path(out)
    t = config.train
    dev = resolve_device(device or t.device, env_info().local_rank)
    d = init_distributed(dev)
    cases = discover_cases(data) if isinstance(data, str | os.PathLike) else list(data)
    ids = [c.case_id for c in cases]
    if split is None and fold is not None:
        split = _fold_split(ids, fold, folds, t.seed, out, d.is_main)
    if split is None:
        logger.warning(
            "no --fold given: training on all %d cases and validating on the same "
            "cases (monitoring only, not an unbiased estimate)",
            len(ids),
        )
        train_ids, val_ids = list(ids), list(ids)
    else:
        train_ids, val_ids = _checked_split(split, ids, data)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _check_run_folder(out, config)
    barrier()
    if t.members > 1:
        members = [
            train(
                member_config(config, i),
                cases,
                out / f"member{i}",
                split={"train": train_ids, "val": val_ids},
                cache=cache if cache is not None else out / "cache",
                device=device,
                resume=resume,
                progress=progress,
                cache_progress=cache_progress,
            )
            for i in range(t.members)
        ]
        if d.is_main:
            _write_ensemble(out / ENSEMBLE_DIR, [m.checkpoint for m in members])
        barrier()
        return TrainResult(
            out=out,
            stages=tuple(s for m in members for s in m.stages),
            train_cases=tuple(train_ids),
            val_cases=tuple(val_ids),
            members=tuple(members),
        )
    used = [c for c in cases if c.case_id in set(train_ids) | set(val_ids)]
    cache_root = Path(cache) if cache is not None else out / "cache"
    slice_cache = _slice_cache(used, config, cache_root, d.is_main, cache_progress)
    run = Run(config, out, dev, d, slice_cache, train_ids, val_ids, resume, progress)
    with _torch_flags(t.deterministic, dev):
        results = [run_stage(run, stage, stage_dir(out, stage)) for stage in stages_of(config)]
    return TrainResult(
        out=out, stages=tuple(results), train_cases=tuple(train_ids), val_cases=tuple(val_ids)
    )
