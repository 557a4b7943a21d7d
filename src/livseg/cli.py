"""The ``livseg`` command: one entry point with subcommands.

Each subcommand parses its arguments and calls one library function. Heavy libraries (torch,
SimpleITK, matplotlib...) are imported inside the handlers so that ``livseg --help`` is instant.
Expected errors (:class:`livseg.errors.LivsegError`) print one line naming the file and the
problem, with no traceback, and give a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence

from livseg import __version__

log = logging.getLogger("livseg")

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

# Each entry: (name, help, register(parser) -> handler). Handlers take the parsed args and
# return an exit code. Register functions live below, one per subcommand.
Register = Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def progress(iterable=None, **kwargs):
    """A tqdm progress bar for the CLI layer (disabled when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (unless None/False/empty, or the text gives it)
    and keeps epilogs (examples) as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


COMMANDS: list[tuple[str, str, Register]] = []
"""(name, one-line help, register function); each section below appends its commands."""


# ---------------------------------------------------------------------------------------------
# Subcommands. Keep each one's parser and handler together, in its own section.
# ---------------------------------------------------------------------------------------------

# >>> info / convert (foundation io)
_CONVERT_EPILOG = """\
examples:
  livseg convert SERIES_DIR ct.nii.gz               DICOM series -> NIfTI (int16 HU when lossless)
  livseg convert STUDY_DIR ct.nii.gz --series UID   pick one series of a folder holding several
  livseg convert SERIES_DIR seg.nii.gz --seg liver.dcm --seg tumour.dcm
        DICOM-SEG objects -> LiTS label (0 background, 1 liver, 2 tumour) on the grid of the
        CT series they were drawn on; liver/tumour is read from each segment's label or
        property type, or given explicitly: --seg liver=FILE, --seg tumour=FILE, --seg 2=FILE
        (every segment of FILE gets that value). Where SEGs overlap the larger value wins.
  livseg convert volume.nrrd volume.nii.gz          between NIfTI, NRRD and MHA
"""

_SEG_NAMES = {"liver": 1, "tumour": 2, "tumor": 2}


def _parse_seg_spec(text: str):
    """'FILE', 'liver=FILE', 'tumour=FILE' or 'N=FILE' -> (path, label or None)."""
    name, sep, rest = text.partition("=")
    if sep and name.strip().lower() in _SEG_NAMES:
        return rest, _SEG_NAMES[name.strip().lower()]
    if sep and name.strip().isdigit():
        value = int(name)
        if not 0 < value <= 255:
            raise argparse.ArgumentTypeError(f"label value must be 1..255 in {text!r}")
        return rest, value
    return text, None


def _register_info(p: argparse.ArgumentParser):
    p.add_argument("path", help="NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument(
        "--series",
        metavar="UID",
        help="SeriesInstanceUID, when the folder holds "
        "several series (the error message lists them)",
    )
    p.add_argument(
        "--kind",
        choices=("image", "label"),
        help="read as image or label (default: guessed from name and values)",
    )
    p.add_argument("--json", action="store_true", help="print the information as JSON")

    def handler(args: argparse.Namespace) -> int:
        import json

        from livseg.info import format_info, volume_info

        info = volume_info(args.path, series_uid=args.series, kind=args.kind)
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return EXIT_OK

    return handler


def _register_convert(p: argparse.ArgumentParser):
    p.epilog = _CONVERT_EPILOG
    p.add_argument("source", help="DICOM series folder or NIfTI/NRRD/MHA file")
    p.add_argument("output", help="output file: .nii, .nii.gz, .nrrd or .mha")
    p.add_argument(
        "--series", metavar="UID", help="SeriesInstanceUID, when the folder holds several series"
    )
    p.add_argument(
        "--seg",
        metavar="[liver=|tumour=|N=]SEG.dcm",
        action="append",
        type=_parse_seg_spec,
        default=[],
        help="DICOM-SEG to place on the grid of SOURCE (repeatable); the output is "
        "then the LiTS label volume",
    )
    p.add_argument(
        "--kind",
        choices=("image", "label"),
        help="read SOURCE as image or label (default: guessed); ignored with --seg",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    def handler(args: argparse.Namespace) -> int:
        from livseg.io import convert

        out = convert(
            args.source,
            args.output,
            series_uid=args.series,
            segs=args.seg or None,
            kind=args.kind,
            overwrite=args.overwrite,
        )
        log.info("wrote %s", out)
        return EXIT_OK

    return handler


COMMANDS.append(
    ("info", "show the geometry and values of a CT/label file or DICOM series", _register_info)
)
COMMANDS.append(
    ("convert", "convert a DICOM series (or DICOM-SEG) to NIfTI/NRRD/MHA", _register_convert)
)
# <<< info / convert


# >>> phantom
def _register_phantom(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument(
        "outdir",
        help="output folder (volume-N.nii.gz, segmentation-N.nii.gz, phantom.json, dicom/case-N/)",
    )
    p.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="dataset seed (default 0); case N uses a seed derived from (seed, N)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=256,
        help="in-plane matrix size in pixels (default 256; spacing about 350/size mm)",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=None,
        help="slices covering 240 mm (default 64 at size 256, scaled with the size)",
    )
    p.add_argument("--dicom", action="store_true", help="also write each CT as a DICOM series")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    def handler(args: argparse.Namespace) -> int:
        from livseg.phantom import write_phantom_dataset

        def bar(cases):
            return progress(
                cases,
                total=args.cases,
                desc="phantom",
                unit="case",
                disable=not _progress_enabled(args),
            )

        paths = write_phantom_dataset(
            args.outdir,
            cases=args.cases,
            seed=args.seed,
            size=args.size,
            slices=args.slices,
            dicom=args.dicom,
            overwrite=args.overwrite,
            progress=bar,
        )
        log.info("wrote %d cases to %s (%d outputs)", args.cases, args.outdir, len(paths))
        return EXIT_OK

    return handler


COMMANDS.append(
    (
        "phantom",
        "write a synthetic abdominal CT dataset with liver/tumour labels (LiTS file names)",
        _register_phantom,
    )
)
# <<< phantom


# >>> evaluate
_EVALUATE_EPILOG = """\
examples:
  livseg evaluate --pred PRED --ref REF --out OUT
        per_case.csv and summary.json (LiTS metric set, 95 % bootstrap intervals over cases)
  livseg evaluate --pred PRED --ref REF --out OUT --lesion-rule codalab
        lesion detection and summary exactly as the official CodaLab scorer (bugs included)
  livseg evaluate --pred A --pred B --ref REF --out OUT
        compare two predictions of the same cases: OUT/a, OUT/b, comparison.csv/.json
        (per-case differences b - a, paired bootstrap interval, cases that changed most)
"""


def _register_evaluate(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.epilog = _EVALUATE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--pred",
        required=True,
        action="append",
        metavar="DIR",
        help="folder of predicted label files (0 background, 1 liver, 2 tumour); give it twice "
        "(A then B) to compare two predictions",
    )
    parser.add_argument(
        "--ref",
        required=True,
        metavar="DIR",
        help="folder of reference label files (their spacing is used); pairs: "
        "same name, or LiTS segmentation-N <-> volume-N",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder for per_case.csv and summary.json (with two --pred: a/, b/, "
        "comparison.csv, comparison.json)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)"
    )
    parser.add_argument(
        "--penalty",
        type=float,
        default=None,
        help="value of RVD/ASSD/RMSD/MSD when a mask is empty (default: "
        "livseg.metrics.lits.DEFAULT_PENALTY = 9001, the official scorer's)",
    )
    parser.add_argument(
        "--lesion-rule",
        choices=("intended", "codalab"),
        default="intended",
        help="lesion detection counting: 'intended' (default; the scorer's author's fix, "
        "merged lesions counted individually) or 'codalab' (the official scorer's outputs, "
        "bugs included, for comparison with leaderboard figures)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    def handler(args: argparse.Namespace) -> int:
        from livseg.errors import LivsegError
        from livseg.metrics.lits import DEFAULT_PENALTY

        if args.jobs < 1:
            raise LivsegError(f"--jobs must be >= 1, got {args.jobs}")
        if len(args.pred) > 2:
            raise LivsegError(f"--pred may be given once or twice, got {len(args.pred)} times")
        options = {
            "jobs": args.jobs,
            "penalty": DEFAULT_PENALTY if args.penalty is None else args.penalty,
            "lesion_rule": args.lesion_rule,
        }
        with _CaseProgress(args) as on_case:
            if len(args.pred) == 1:
                return _evaluate_one(args, on_case, options)
            return _evaluate_two(args, on_case, options)

    return handler


class _CaseProgress:
    """Context manager giving an ``on_case(result, total)`` callback that drives a progress bar."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bar = None

    def __enter__(self):
        def on_case(result, total):
            if self.bar is None:
                self.bar = progress(
                    total=total,
                    desc="evaluate",
                    unit="case",
                    disable=not _progress_enabled(self.args),
                )
            self.bar.update(1)
            self.bar.set_postfix_str(result.case_id)

        return on_case

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _evaluate_one(args: argparse.Namespace, on_case, options: dict) -> int:
    from pathlib import Path

    from livseg.io.atomic import check_writable
    from livseg.metrics.evaluate import (
        CSV_NAME,
        JSON_NAME,
        evaluate_folders,
        format_table,
        write_results,
    )

    for name in (CSV_NAME, JSON_NAME):  # fail before the work, not after
        check_writable(Path(args.out) / name, args.overwrite)
    result = evaluate_folders(args.pred[0], args.ref, on_case=on_case, **options)
    csv_path, json_path = write_results(result, args.out, overwrite=args.overwrite)
    print(format_table(result))
    print(f"\nwrote {csv_path} and {json_path}")
    return EXIT_OK


def _evaluate_two(args: argparse.Namespace, on_case, options: dict) -> int:
    from livseg.io.atomic import check_writable
    from livseg.metrics.compare import (
        compare_folders,
        comparison_paths,
        format_comparison,
        write_comparison,
    )
    from livseg.metrics.evaluate import format_table

    for path in comparison_paths(args.out):  # fail before the work, not after
        check_writable(path, args.overwrite)
    comp = compare_folders(args.pred[0], args.pred[1], args.ref, on_case=on_case, **options)
    sources = (str(args.pred[0]), str(args.pred[1]))
    write_comparison(comp, args.out, overwrite=args.overwrite, sources=sources)
    for side, result in (("a", comp.a), ("b", comp.b)):
        print(f"prediction {side}: {sources[side == 'b']}")
        print(format_table(result))
        print()
    print(format_comparison(comp, sources))
    print(f"\nwrote {args.out}/a, {args.out}/b, comparison.csv and comparison.json")
    return EXIT_OK


COMMANDS.append(
    (
        "evaluate",
        "LiTS metrics of predicted label files against references (per-case CSV + summary JSON "
        "with confidence intervals; two --pred: paired comparison)",
        _register_evaluate,
    )
)
# <<< evaluate


# >>> train / cv
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
        from livseg.train.config import load_config
        from livseg.train.distributed import shutdown_distributed
        from livseg.train.trainer import train

        _training_logging()
        config = load_config(args.config, args.overrides)
        bar = _TrainBar(_progress_enabled(args))
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
        finally:
            bar.close()
            shutdown_distributed()
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
        from livseg.train.cv import cross_validate, load_stage_configs
        from livseg.train.distributed import shutdown_distributed

        _training_logging()
        configs = load_stage_configs(args.configs, args.overrides)
        bar = _TrainBar(_progress_enabled(args))
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
            )
        finally:
            bar.close()
            shutdown_distributed()
        log.info("cross-validation summary: %s", result.summary_file)
        return EXIT_OK

    return handler


COMMANDS.append(
    ("train", "train a model configuration (CR-U-Net runs both levels)", _register_train)
)
COMMANDS.append(
    (
        "cv",
        "cross-validate cascades by patient: train k folds, segment held-out cases at full "
        "resolution, LiTS scores",
        _register_cv,
    )
)
# <<< train / cv


# >>> segment / demo
class _StageProgress:
    """Progress callback ``(case, stage, done, total)`` of ``segment`` and ``demo``.

    On a terminal: one bar per case and stage (its rate counts from the first report, so the
    first batch, which includes the model warm-up, does not give a nonsense rate). Otherwise
    (a log file, a pipe): one line per case and stage when it ends, with its elapsed time.
    """

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.key: tuple[str, str] | None = None
        self.start = time.perf_counter()

    def __call__(self, case: str, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.key != (case, stage):
            self.close()
            self.key = (case, stage)
            if self.tty:
                unit = "slice" if stage in ("liver", "tumour") else "step"
                self.bar = progress(
                    total=total, initial=done, desc=f"{case} {stage}", unit=unit, leave=False
                )
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if done >= total and not self.tty:
            now = time.perf_counter()
            count = f" {total} slices," if stage in ("liver", "tumour") else ""
            print(f"{case}: {stage}{count} {now - self.start:.1f} s", file=sys.stderr, flush=True)
            self.start = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from livseg.infer.pretrained import DEFAULT_MODEL, DEFAULT_PAPER, PAPER_CASCADE

    p.add_argument(
        "--model",
        choices=tuple(PAPER_CASCADE),
        default=DEFAULT_MODEL,
        help="liver model family of the shipped weights",
    )
    cascade = p.add_mutually_exclusive_group()
    cascade.add_argument(
        "--paper",
        dest="paper",
        action="store_true",
        default=DEFAULT_PAPER,
        help="the papers' cascade: the liver model on every slice, no coarse 3-D stage"
        + (" (the default)" if DEFAULT_PAPER else ""),
    )
    cascade.add_argument(
        "--livseg",
        dest="paper",
        action="store_false",
        help="livseg's cascade: a coarse 3-D stage places the liver, the liver model runs in "
        "its region, fold ensembles" + ("" if DEFAULT_PAPER else " (the default)"),
    )
    p.add_argument(
        "--coarse-model",
        metavar="DIR",
        default=None,
        help="coarse 3-D liver stage folder (a checkpoint or fold*/ ensemble) instead of the "
        "shipped one; also adds it to the papers' cascade",
    )
    p.add_argument(
        "--liver-model",
        metavar="DIR",
        default=None,
        help="liver checkpoint folder (model.safetensors + config.json) instead of the shipped one",
    )
    p.add_argument(
        "--tumour-model",
        "--tumor-model",
        metavar="DIR",
        default=None,
        help="tumour checkpoint folder instead of the shipped one",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _segment_options(args: argparse.Namespace):
    from livseg.infer.run import SegmentOptions

    return SegmentOptions(
        liver_model=args.liver_model,
        tumour_model=args.tumour_model,
        coarse_model=args.coarse_model,
        paper=args.paper,
        tta=getattr(args, "tta", False),
        batch_size=getattr(args, "batch_size", 8),
    )


def _case_line(c) -> str:
    """One line of ``livseg segment``'s summary: volumes, lesions, scores, output."""
    m = c.measurements
    if not m.liver_found:
        return f"{c.name}: NO LIVER FOUND -> {c.outputs['labels']}"
    burden = f"{100 * m.tumour_burden:.1f}%" if m.tumour_burden is not None else "-"
    scores = ""
    if c.scores is not None:
        scores = (
            f", liver Dice {c.scores['liver_dice']:.3f} / tumour Dice "
            f"{c.scores['tumor_dice']:.3f} against the reference"
        )
    return (
        f"{c.name}: liver {m.liver_volume_ml:.0f} ml, tumour "
        f"{m.tumour_volume_ml:.1f} ml ({burden}), {m.lesion_count} lesion(s)"
        f"{', INCOMPLETE liver coverage' if m.incomplete_coverage else ''}{scores} "
        f"-> {c.outputs['labels']}"
    )


def _register_segment(p: argparse.ArgumentParser):
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="CT files (.nii/.nii.gz/.nrrd/.mha) or DICOM series folders",
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="OUTDIR",
        help="output folder: <name>_seg.nii.gz, <name>_measurements.json, "
        "<name>_lesions.csv, <name>_overlay.png, <name>_report.html",
    )
    _add_model_args(p)
    p.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write <name>_seg.dcm, a DICOM-SEG referencing the input series "
        "(DICOM inputs only)",
    )
    p.add_argument(
        "--ref",
        action="append",
        metavar="LABELS",
        default=None,
        help="reference labels (once per input, in order): drawn dashed in the overlay, and "
        "the case's LiTS scores go to the measurements JSON and the report",
    )
    p.add_argument(
        "--no-overlay", action="store_true", help="skip the PNG montage and the HTML report"
    )
    p.add_argument(
        "--series",
        metavar="UID",
        default=None,
        help="SeriesInstanceUID to read when a DICOM folder holds several series "
        "(without it such a folder is refused with the list of its series)",
    )

    def handler(args: argparse.Namespace) -> int:
        from livseg.infer.run import SaveOptions, segment_files

        bars = _StageProgress(args.quiet)
        try:
            cases = segment_files(
                args.inputs,
                args.out,
                model=args.model,
                device=args.device,
                options=_segment_options(args),
                save=SaveOptions(
                    overlay=not args.no_overlay,
                    dicom_seg=args.dicom_seg,
                    overwrite=args.overwrite,
                ),
                references=args.ref,
                series_uid=args.series,
                progress=bars,
            )
        finally:
            bars.close()
        for c in cases:
            print(_case_line(c))
        return EXIT_OK

    return handler


def _register_demo(p: argparse.ArgumentParser):
    p.add_argument("--out", default="livseg_demo", metavar="DIR", help="output folder")
    _add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--size", type=int, default=256, help="phantom in-plane size (pixels)")

    def handler(args: argparse.Namespace) -> int:
        from livseg.infer import run_demo

        bars = _StageProgress(args.quiet)
        try:
            r = run_demo(
                args.out,
                model=args.model,
                device=args.device,
                seed=args.seed,
                size=args.size,
                overwrite=args.overwrite,
                options=_segment_options(args),
                progress=bars,
            )
        finally:
            bars.close()
        m, s = r.case.measurements, r.metrics
        print(f"livseg demo: phantom CT (seed {args.seed}) segmented in {r.seconds:.1f} s")
        print(
            f"  liver : {m.liver_volume_ml:7.1f} ml (truth {r.truth_liver_ml:7.1f} ml), "
            f"Dice {s['liver_dice']:.3f}"
        )
        print(
            f"  tumour: {m.tumour_volume_ml:7.1f} ml (truth {r.truth_tumour_ml:7.1f} ml), "
            f"Dice {s['tumor_dice']:.3f}, lesions {m.lesion_count} (truth "
            f"{r.truth_lesions}), detected {s['lesion_tp']}"
        )
        print(f"  outputs in {r.outdir}/ (open phantom_ct_report.html)")
        return EXIT_OK

    return handler


COMMANDS.append(
    ("segment", "segment liver and liver tumours in CT files or DICOM series", _register_segment)
)
COMMANDS.append(
    ("demo", "segment a synthetic phantom CT with the shipped models and score it", _register_demo)
)
# <<< segment / demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livseg",
        description="Liver and liver-tumour segmentation in abdominal CT (labels: 0 background, "
        "1 liver, 2 tumour), LiTS evaluation, training and cross-validation.",
    )
    parser.add_argument("--version", action="version", version=f"livseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, register in COMMANDS:
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter
        )
        p.set_defaults(_handler=register(p))
    return parser


class _StderrHandler(logging.StreamHandler):
    """A log handler that always writes to the *current* ``sys.stderr`` (redirections, pytest)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignore
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    root = logging.getLogger("livseg")
    root.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``livseg`` command line; returns the exit code (never raises on expected errors)."""
    from livseg.errors import LivsegError

    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    _setup_logging(args.verbose, args.quiet)
    handler = getattr(args, "_handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(handler(args) or EXIT_OK)
    except LivsegError as exc:
        print(f"livseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # an unforeseen file-system failure: still one line naming the path
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"livseg {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("livseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
