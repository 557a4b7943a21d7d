"""``livseg train`` and ``livseg cv``: training a configuration, cross-validating cascades."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from livseg.cli import EXIT_OK, Register, _progress_enabled, log, progress


class _TrainBar:
    """Progress callback of ``livseg train``/``cv``: one tqdm bar per epoch, loss and slices/s."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.key: tuple | None = None

    def __call__(self, p) -> None:  # p: livseg.train.trainer.TrainProgress
        if not self.enabled:
            return
        key = (p.stage, p.epoch)
        if p.phase == "train":
            if key != self.key:
                self.close()
                self.key = key
                self.bar = progress(
                    total=p.steps,
                    desc=f"{p.stage} epoch {p.epoch}/{p.epochs}",
                    unit="it",
                    leave=False,
                )
            self.bar.set_postfix(
                loss=f"{p.loss:.4f}", slices_s=f"{p.slices_per_s:.1f}", refresh=False
            )
            self.bar.update(1)
        elif p.phase == "val" and self.bar is not None:
            self.bar.set_description(f"{p.stage} epoch {p.epoch}/{p.epochs} validating")
        elif p.phase == "epoch":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, None


def _bundled_configs() -> list[str]:
    """The bundled configuration names, read from the package folder (``livseg.train``, which
    :func:`livseg.train.config.bundled_configs` lives in, is too slow to import for help)."""
    from importlib import resources

    folder = resources.files("livseg") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help=f"configuration: a JSON file or a bundled name ({', '.join(_bundled_configs())})",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="dataset folder (LiTS or MSD layout) or CSV/JSON list of cases",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to create")
    p.add_argument(
        "--device",
        default=None,
        metavar="auto|cpu|cuda[:N]",
        help="device (default: the configuration's train.device, 'auto')",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoints"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a configuration value, e.g. train.epochs=3 or "
        "model.base_width=16 (repeatable)",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="slice-cache folder (default: OUT/cache); reuse it across runs",
    )


def _training_logging() -> None:
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: one voice
        logging.getLogger("livseg").setLevel(logging.WARNING)


def _register_train(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    _add_training_args(p)
    p.add_argument(
        "--fold",
        type=int,
        default=None,
        metavar="K",
        help="validate on fold K (0-based) of --folds patient-wise folds",
    )
    p.add_argument("--folds", type=int, default=5, metavar="N", help="number of folds (5)")

    def handler(args: argparse.Namespace) -> int:
        from livseg.distributed import shutdown_distributed
        from livseg.train.config import load_config
        from livseg.train.trainer import train

        _training_logging()
        config = load_config(args.config, args.overrides)
        bar = _TrainBar(_progress_enabled(args))
        done = False
        try:
            result = train(
                config,
                args.data,
                args.out,
                fold=args.fold,
                folds=args.folds,
                cache=args.cache,
                device=args.device,
                resume=args.resume,
                progress=bar,
                cache_progress=progress,
            )
            done = True
        finally:
            bar.close()
            shutdown_distributed(sync=done)
        log.info("trained model: %s", result.checkpoint)
        return EXIT_OK

    return handler


def _register_cv(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument(
        "configs",
        nargs="+",
        metavar="CONFIG",
        help="stage configurations (JSON files or bundled names): one or more liver stages "
        "and at most one tumour stage (train.target tumour), e.g. pretrained_crunet_liver "
        "pretrained_densefcn_tumour; without a tumour stage the cascade is liver only",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="dataset folder (LiTS or MSD layout) or CSV/JSON list of cases with labels",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="cross-validation folder; the same command again continues an unfinished one",
    )
    p.add_argument("--folds", type=int, default=5, metavar="K", help="folds by patient (5)")
    p.add_argument(
        "--fold",
        type=int,
        action="append",
        default=None,
        metavar="K",
        dest="only_folds",
        help="run only fold K (repeatable; default all), e.g. one fold per machine or "
        "process into the same --out; whichever call finds every fold finished pools the "
        "results",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="fold assignment seed (0)")
    p.add_argument(
        "--extra",
        default=None,
        metavar="DATA",
        help="training-only cases (folder or list file): every fold trains on them, none is "
        "held out or scored",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[STAGE:]KEY=VALUE",
        dest="overrides",
        help="override a value of every configuration, e.g. train.epochs=3, or with a "
        "prefix only of one stage (coarse, liver, tumour) or configuration name, e.g. "
        "tumour:model.growth=4 "
        "(repeatable)",
    )
    p.add_argument(
        "--device",
        default=None,
        metavar="auto|cpu|cuda[:N]",
        help="device (default: training the configurations' train.device, segmenting auto)",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="slice-cache folder (default: OUT/cache); reuse it across runs",
    )

    def handler(args: argparse.Namespace) -> int:
        from livseg.distributed import shutdown_distributed
        from livseg.train.cv import cross_validate, load_stage_configs

        _training_logging()
        configs = load_stage_configs(args.configs, args.overrides)
        bar = _TrainBar(_progress_enabled(args))
        done = False
        try:
            result = cross_validate(
                configs,
                args.data,
                args.out,
                args.folds,
                seed=args.seed,
                extra=args.extra,
                device=args.device,
                cache=args.cache,
                progress=bar,
                cache_progress=progress,
                only_folds=args.only_folds,
            )
            done = True
        finally:
            bar.close()
            shutdown_distributed(sync=done)
        if result is not None:
            log.info("cross-validation summary: %s", result.summary_file)
        return EXIT_OK

    return handler


COMMANDS: list[tuple[str, str, Register]] = [
    ("train", "train a model configuration (CR-U-Net runs both levels)", _register_train),
    (
        "cv",
        "cross-validate cascades by patient: train k folds, segment held-out cases at full "
        "resolution, LiTS scores",
        _register_cv,
    ),
]
